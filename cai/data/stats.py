"""Summary statistics of a preference set: what `cai data stats` prints.

Lengths are per side (prompt, chosen, rejected), summed over that side's messages:
characters, whitespace-separated words, and turns. p_chosen is summarised as mean/min/max,
hard (exactly 0 or 1) vs soft counts, ties (0.5), and a 10-bucket histogram where bucket
"0.1-0.2" holds 0.1 <= p < 0.2 and the last bucket also holds 1.0.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any, Iterable

from cai.records import PreferenceRecord
from cai.schema import prompt_key

BUCKETS = 10


def _summary(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "mean": statistics.fmean(values),
            "median": statistics.median(values), "max": max(values)}


def _bucket(p: float) -> int:
    return min(int(math.floor(p * BUCKETS + 1e-9)), BUCKETS - 1)  # 1e-9: 0.3*10 is 2.9999...


def bucket_labels() -> list[str]:
    return [f"{i / BUCKETS:.1f}-{(i + 1) / BUCKETS:.1f}" for i in range(BUCKETS)]


def compute_stats(records: Iterable[PreferenceRecord]) -> dict[str, Any]:
    records = list(records)
    ps = [r.p_chosen for r in records]
    hist = Counter(_bucket(p) for p in ps)
    lengths: dict[str, Any] = {}
    for side in ("prompt", "chosen", "rejected"):
        turns = [getattr(r, side) for r in records]
        lengths[side] = {
            "chars": _summary([sum(len(m.content) for m in t) for t in turns]),
            "words": _summary([sum(len(m.content.split()) for m in t) for t in turns]),
            "turns": _summary([len(t) for t in turns]),
        }
    hard = sum(p in (0.0, 1.0) for p in ps)
    return {
        "count": len(records),
        "unique_prompts": len({prompt_key(r.prompt) for r in records}),
        "unique_ids": len({r.id for r in records}),
        "sources": dict(Counter(r.source for r in records).most_common()),
        "principle_ids": dict(Counter(p for r in records for p in r.principle_ids).most_common()),
        "labelers": dict(Counter(r.labeler for r in records if r.labeler).most_common()),
        "p_chosen": {
            "mean": statistics.fmean(ps) if ps else None,
            "min": min(ps, default=None),
            "max": max(ps, default=None),
            "hard": hard,
            "soft": len(ps) - hard,
            "ties": sum(p == 0.5 for p in ps),
            "histogram": {label: hist.get(i, 0) for i, label in enumerate(bucket_labels())},
        },
        "lengths": lengths,
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable rendering of `compute_stats` output."""
    lines = [f"records         {stats['count']}",
             f"unique prompts  {stats['unique_prompts']}",
             f"unique ids      {stats['unique_ids']}"]

    def counts(title: str, c: dict[str, int]) -> None:
        lines.append(f"{title:15} " + (", ".join(f"{k}={v}" for k, v in c.items()) or "-"))

    counts("sources", stats["sources"])
    counts("principle ids", stats["principle_ids"])
    counts("labelers", stats["labelers"])
    p = stats["p_chosen"]
    if stats["count"]:
        lines.append(f"p_chosen        mean {p['mean']:.3f}  min {p['min']:.3f}  max {p['max']:.3f}  "
                     f"hard {p['hard']}  soft {p['soft']}  ties {p['ties']}")
        top = max(p["histogram"].values()) or 1
        for label, n in p["histogram"].items():
            lines.append(f"  {label}  {n:>8}  {'#' * round(30 * n / top)}")
    lines.append("lengths         min / mean / median / max")
    for side, per in stats["lengths"].items():
        for unit, s in per.items():
            vals = " / ".join(_fmt(s[k]) for k in ("min", "mean", "median", "max")) if s else "-"
            lines.append(f"  {side:8} {unit:5}  {vals}")
    return "\n".join(lines)
