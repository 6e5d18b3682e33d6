"""Edit one principle, relabel only the pairs it touched.

A label stores, in `metadata.ai_feedback`:

    principle_hashes   the feedback frame's hash and each used principle's (to_record)
    input_hash         the pair as read (prompt, both answers in input order, provenance
                       less its location) and the labeling settings (mode, tau, K, seed,
                       few-shot, CoT, feedback model)

On a rerun into the same output, an old label is kept, byte for byte, when its pair is
still among the inputs with the same input hash, every principle hash it stored is the
constitution's now, and drawing the pair's principles again gives the same ones (a
principle added, removed or reweighted moves only the draws it takes part in). Any other
pair is labeled again; a label whose pair is gone is dropped. Locations (`location`
entries at any depth of the provenance) are left out of the input hash on purpose: a
store's shard names change on every rewrite and rows move when others are added, neither
of which changes what the labeler sees.

`tau: fit` fits tau on the human pairs at every run, so it relabels everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.io import DataError
from cai.label.inputs import Pair, pair_key
from cai.records import PreferenceRecord
from cai.schema import content_hash

# settings that decide a label besides the constitution's text (run_info's other fields)
SETTINGS = ("mode", "tau", "principles_k", "seed", "few_shot", "cot", "clamp")


def input_hash(pair: Pair, settings: dict[str, Any]) -> str:
    """What a label depends on besides the constitution: the pair as read (not where it was
    read from) and the labeling settings."""
    return content_hash({"prompt": pair.prompt, "first": pair.first, "second": pair.second,
                         "input": _unplaced(pair.input), "settings": settings})


def _unplaced(value: Any) -> Any:
    """`value` without its `location` entries, at any depth (the importer keeps one under
    metadata.import too)."""
    if isinstance(value, dict):
        return {k: _unplaced(v) for k, v in value.items() if k != "location"}
    if isinstance(value, list):
        return [_unplaced(v) for v in value]
    return value


def label_settings(run: dict[str, Any], model: str | None, backend: str | None) -> dict[str, Any]:
    """The settings `input_hash` covers: `run_info`'s labeling fields and the feedback model."""
    return {**{k: run.get(k) for k in SETTINGS}, "model": model, "backend": backend}


def read_old_labels(out: str | Path) -> list[PreferenceRecord]:
    """The labels an earlier run left in `out` (a store directory or JSONL); none when it
    does not exist yet. A file that is not labels is refused rather than overwritten."""
    from cai.data.store import read_preferences

    path = Path(out)
    if not path.exists() or (path.is_dir() and not any(path.glob("*.parquet"))):
        return []
    try:
        records = read_preferences(path)
    except DataError as e:
        raise DataError(f"{path}: holds something other than labels, so it cannot be "
                        f"relabeled in place ({e}); choose another out") from None
    return [r for r in records if r.source == "ai-feedback"]


def record_key(rec: PreferenceRecord) -> str:
    """The pair key of a label (the same for either orientation, like `Pair.key`)."""
    prompt = [m.model_dump() for m in rec.prompt]
    return pair_key(prompt, rec.chosen[-1].content, rec.rejected[-1].content)


@dataclass
class Relabel:
    """Which pairs to label again, and the old labels to keep (by pair key)."""

    todo: list[Pair] = field(default_factory=list)
    kept: dict[str, PreferenceRecord] = field(default_factory=dict)
    dropped: int = 0  # old labels whose pair is no longer among the inputs
    reasons: dict[str, int] = field(default_factory=dict)  # why pairs are labeled again


def stale_reason(rec: PreferenceRecord | None, pair: Pair, expected_hash: str,
                 hashes: dict[str, str], drawn: list[str]) -> str | None:
    """Why `pair` must be labeled again given its old label `rec`, or None when it stands."""
    if rec is None:
        return "new pair"
    feedback = rec.metadata.get("ai_feedback") or {}
    if feedback.get("input_hash") != expected_hash:
        return "pair or settings changed" if feedback.get("input_hash") else \
            "labeled before input hashes were stored"
    used = feedback.get("principle_hashes") or {}
    changed = sorted(k for k, h in used.items() if hashes.get(k) != h)
    if changed:
        return f"{changed[0]} changed" if changed[0] in hashes else f"{changed[0]} removed"
    if list(rec.principle_ids) != drawn:
        return "its principle draw changed"
    return None


def plan_relabel(old: list[PreferenceRecord], pairs: list[Pair],
                 settings: dict[str, Any], hashes: dict[str, str], draw: Any,
                 incremental: bool = True) -> Relabel:
    """Split `pairs` into those to label and the old labels to keep. `draw(pair)`: the ids
    of the principles the pair would be labeled under now."""
    by_key = {record_key(r): r for r in old}
    plan = Relabel()
    wanted = {p.key for p in pairs}
    plan.dropped = sum(k not in wanted for k in by_key)
    for pair in pairs:
        rec = by_key.get(pair.key) if incremental else None
        why = stale_reason(rec, pair, input_hash(pair, settings), hashes, draw(pair)) \
            if incremental else "tau: fit relabels everything"
        if why is None:
            plan.kept[pair.key] = rec  # type: ignore[assignment]
        else:
            plan.todo.append(pair)
            plan.reasons[why] = plan.reasons.get(why, 0) + 1
    return plan
