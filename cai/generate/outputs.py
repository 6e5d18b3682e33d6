"""What a run leaves behind, derived from its revision records.

    revisions/    every record, whatever its status (written chunk by chunk; see checkpoint)
    sft/          status ok and ok:unchanged: the prompt conversation + the final answer
                  as the assistant turn (SL-CAI fine-tuning data; the paper trains on final
                  answers, and an answer judged to need no change is one)
    preferences/  status ok only (a revised answer): PreferenceRecord(source="ai-revision", chosen = final
                  revision, rejected = initial response, p_chosen = 1.0), via
                  `cai.data.store.write_preferences`

Only ok records become training data: a degenerate revision (empty, looping, cut off,
unchanged) would teach the model the failure, and pairing it against the initial
response would label noise as preferred. They stay in revisions/ with their reason.
sft/ and preferences/ are rewritten from revisions/ at the end of every invocation, so
they are always complete for what revisions/ holds (and a crash while writing them is
repaired by the next run).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from cai.data.store import write_preferences
from cai.generate.incremental import usage
from cai.generate.pipeline import Chain
from cai.io import write_parquet_atomic
from cai.records import PreferenceRecord
from cai.schema import arrow_messages

# Statuses whose final answer is training data: revised (ok) or kept as it was.
USABLE = ("ok", "ok:unchanged")
SFT = "sft"
PREFERENCES = "preferences"
SFT_SHARD_SIZE = 1000

_MESSAGES = arrow_messages()
SFT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", _MESSAGES),
    ("source_id", pa.string()),
    ("principle_ids", pa.list_(pa.string())),
    ("constitution", pa.string()),
    ("model", pa.string()),
])


def _score(x: float | None) -> float | None:
    """A model score as stored: 3 decimals, so a resumed run (other batches, other float
    round-off in the engine) stores the numbers an uninterrupted one does."""
    return None if x is None else round(x, 3)


def revision_row(chain: Chain, provenance: dict[str, Any]) -> dict[str, Any]:
    """A finished chain as a row of REVISION_SCHEMA. `provenance`: the run's model, backend,
    sampling, seed, constitution, constitution_hash, config_hash, and principle_hashes (the
    run's `incremental.hash_table`, of which the row keeps the entries its chain used)."""
    rounds = [{**asdict(r), "p_no_change": _score(r.p_no_change),
               "revision_relevance": _score(r.revision_relevance)} for r in chain.rounds]
    run = provenance
    ok = chain.status in USABLE
    return {
        "id": chain.id,
        "source_id": chain.item.source_id,
        "location": chain.item.location,
        "sample_index": chain.sample_index,
        "prompt": chain.item.messages,
        "initial_response": chain.response,
        "response_finish": chain.response_finish,
        "response_tokens": chain.response_tokens,
        "rounds": rounds,
        "principle_ids": [r.principle_id for r in chain.rounds],
        "final_response": chain.current if ok else None,
        "status": chain.status,
        "reason": chain.reason,
        "flags": chain.flags,
        "route": chain.route,
        "route_score": _score(chain.route_score),
        "model": run["model"],
        "backend": run["backend"],
        "sampling": json.dumps(run["sampling"], sort_keys=True),
        "seed": run["seed"],
        "constitution": run["constitution"],
        "constitution_hash": run["constitution_hash"],
        "principle_hashes": usage(chain.route, [r.principle_id for r in chain.rounds],
                                  run["principle_hashes"]),
        "config_hash": run["config_hash"],
        "timings": json.dumps({k: round(v, 3) for k, v in chain.timings.items()}, sort_keys=True),
        "metadata": json.dumps(chain.item.metadata, sort_keys=True, ensure_ascii=False, default=str),
    }


def sft_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "messages": list(row["prompt"]) + [{"role": "assistant", "content": row["final_response"]}],
        "source_id": row["source_id"],
        "principle_ids": row["principle_ids"],
        "constitution": row["constitution"],
        "model": row["model"],
    }


def preference(row: dict[str, Any]) -> PreferenceRecord:
    """The revision pair: the final revision is preferred over the initial response."""
    return PreferenceRecord(
        id=row["id"],
        prompt=row["prompt"],
        chosen=[{"role": "assistant", "content": row["final_response"]}],
        rejected=[{"role": "assistant", "content": row["initial_response"]}],
        p_chosen=1.0,
        source="ai-revision",
        principle_ids=row["principle_ids"],
        labeler=row["model"],
        metadata={
            "source_id": row["source_id"],
            "sample_index": row["sample_index"],
            "constitution": row["constitution"],
            "constitution_hash": row["constitution_hash"],
            "config_hash": row["config_hash"],
            "rounds": len(row["rounds"]),
            "critiques": [r["critique"] for r in row["rounds"] if r["critique"] is not None],
        },
    )


def write_sft(rows: Iterable[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Sharded Parquet (deterministic names; shards beyond the new count are removed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    shards = []
    for i in range(0, max(len(rows), 1), SFT_SHARD_SIZE):
        part = rows[i:i + SFT_SHARD_SIZE]
        name = f"part-{i // SFT_SHARD_SIZE:05d}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(part, schema=SFT_SCHEMA), out_dir / name)
        shards.append({"file": name, "count": len(part)})
    keep = {s["file"] for s in shards}
    for stale in out_dir.glob("part-*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    return shards


def write_outputs(records: list[dict[str, Any]], root: Path) -> dict[str, Any]:
    """sft/ and preferences/ from the revision records; returns their manifest entries."""
    usable = [r for r in records if r["status"] in USABLE]
    revised = [r for r in records if r["status"] == "ok"]
    sft_shards = write_sft((sft_row(r) for r in usable), root / SFT)
    pref_manifest = write_preferences((preference(r) for r in revised), root / PREFERENCES)
    return {
        SFT: {"dir": SFT, "count": len(usable), "shards": sft_shards},
        PREFERENCES: {"dir": PREFERENCES, "count": pref_manifest["count"],
                      "shards": pref_manifest["shards"]},
    }
