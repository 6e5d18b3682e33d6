"""Training inputs: preference pairs for the reward model, chat conversations for SFT.

Preference inputs are whatever `cai label --pairs` reads (a store, .parquet, JSONL of
records, HH transcripts, prompt/chosen/rejected rows, TRL rows), read by the same reader
(`cai.label.inputs.read_pairs`) and mixed by `cai.data.mix` (weights, dedupe, split by
prompt). A pair that cannot be used (identical answers, empty, multi-turn answer, a
duplicate, unlabeled candidates) is a reject with its location; the run goes on and says
how many. A file of the wrong kind (SFT rows given to the reward model, pairs given to SFT,
generation records) is refused up front, naming what it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cai.io import DataError, iter_rows
from cai.records import PreferenceRecord
from cai.schema import Reject, check_conversation, prompt_key

SOURCES = ("human", "ai-revision", "ai-feedback")


def data_kind(path: str | os.PathLike) -> str:
    """"pairs", "candidates", "sft", "revisions", "prompts" or "unknown", from the first
    readable row."""
    p = Path(path)
    if p.is_dir() and (p / "revisions").is_dir() and (p / "sft").is_dir():
        return "generate-run"
    for row in iter_rows(path):
        if not row.ok:
            continue
        data = row.data or {}
        if "initial_response" in data and "rounds" in data:
            return "revisions"
        if "chosen" in data and "rejected" in data:
            return "pairs"
        if "responses" in data:
            return "candidates"
        if "messages" in data:
            return "sft"
        if "prompt" in data:
            return "prompts"
        return "unknown"
    return "empty"


_KIND_WORDS = {
    "sft": "chat conversations (rows with `messages`, e.g. the sft/ output of `cai generate`)",
    "pairs": "preference pairs (rows with `chosen` and `rejected`)",
    "candidates": "unlabeled candidates from `cai sample` (label them with `cai label` first)",
    "revisions": "generation records (`cai generate`'s revisions/); use its sft/ or "
                 "preferences/ directory",
    "generate-run": "a `cai generate` run directory; use its sft/ or preferences/ directory",
    "prompts": "prompts without answers",
    "unknown": "rows of an unknown kind",
    "empty": "empty (no rows)",
}


def describe_kind(kind: str) -> str:
    return _KIND_WORDS.get(kind, kind)


def _pair_to_record(pair) -> PreferenceRecord:
    src = pair.input.get("source")
    meta: dict[str, Any] = {"location": pair.input.get("location")}
    return PreferenceRecord(
        id=pair.input.get("id") or pair.key,
        prompt=pair.prompt,
        chosen=[{"role": "assistant", "content": pair.first}],
        rejected=[{"role": "assistant", "content": pair.second}],
        p_chosen=pair.input["p_chosen"],
        source=src if src in SOURCES else "human",
        principle_ids=pair.input.get("principle_ids") or [],
        labeler=pair.input.get("labeler"),
        metadata=meta,
    )


def read_preference_source(path: str) -> tuple[list[PreferenceRecord], list[Reject]]:
    """Labeled pairs of one input, and its rejects (with locations)."""
    kind = data_kind(path)
    if kind == "empty":
        raise DataError(f"{path}: empty dataset (no rows)")
    if kind != "pairs":
        raise DataError(f"{path}: this is {describe_kind(kind)}, not preference pairs; the "
                        "reward model trains on a preference store or a file of "
                        "chosen/rejected pairs")
    from cai.label.inputs import read_pairs

    pairs, rejects = read_pairs(path)
    records = []
    for pair in pairs:
        if pair.input.get("p_chosen") is None:
            rejects.append(Reject(location=pair.input.get("location", path), code="unlabeled",
                                  reason="no preference label"))
            continue
        records.append(_pair_to_record(pair))
    return records, rejects


def load_preferences(specs: list[str], eval_data: str | None, eval_fraction: float, seed: int):
    """(train records, eval records, rejects, mix report) for `SRC[:WEIGHT]` specs."""
    from cai.data.mix import mix_records, parse_mix_spec

    sets, rejects = [], []
    for spec in specs:
        inp = parse_mix_spec(spec)
        recs, rej = read_preference_source(inp.path)
        sets.append((inp, recs))
        rejects += rej
    train, test, report = mix_records(sets, test_fraction=0.0 if eval_data else eval_fraction,
                                      seed=seed)
    overlap = 0
    if eval_data:
        test, rej = read_preference_source(eval_data)
        rejects += rej
        # No prompt in both: training pairs on an eval prompt are left out (and counted).
        held = {prompt_key(r.prompt) for r in test}
        kept = [r for r in train if prompt_key(r.prompt) not in held]
        overlap, train = len(train) - len(kept), kept
    report.train, report.test = len(train), len(test)
    if not train:
        where = ", ".join(specs)
        raise DataError(f"{where}: no usable preference pairs for training"
                        + (f" ({len(rejects)} rejected; first: {rejects[0].location}: "
                           f"{rejects[0].reason})" if rejects else ""))
    return train, test, rejects, {**report.model_dump(), "train_pairs_on_eval_prompts": overlap}


# --------------------------------------------------------------------------- SFT


def _check_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("`messages` must be a non-empty list of {role, content}")
    out = check_conversation(value, where="messages", system="anywhere")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise ValueError("no non-empty assistant turn to learn from")
    return out


def read_conversations(path: str, messages_field: str = "messages"
                       ) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Conversations ({"id", "messages", "location"}) of a chat-messages dataset, and the
    rows that are not usable (with location and reason)."""
    kind = data_kind(path)
    if kind == "empty":
        raise DataError(f"{path}: empty dataset (no rows)")
    if kind != "sft" and messages_field == "messages":
        raise DataError(f"{path}: this is {describe_kind(kind)}, not chat conversations; SFT "
                        "trains on rows with a `messages` list (e.g. `cai generate`'s sft/)")
    convs, rejects = [], []
    for row in iter_rows(path):
        if not row.ok:
            rejects.append(Reject(location=row.location, code="unreadable", reason=row.error,
                                  raw=row.raw))
            continue
        data = row.data or {}
        try:
            messages = _check_messages(data.get(messages_field))
        except ValueError as e:
            rejects.append(Reject(location=row.location, code="bad-messages", reason=str(e)))
            continue
        convs.append({"id": data.get("id") or row.location, "messages": messages,
                      "location": row.location})
    return convs, rejects
