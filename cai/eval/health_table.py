"""Per-principle health as a text table (the CLI) and as report sections (report.html/md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai.eval.health import _stage

COLUMNS = [("drawn", "drawn", None), ("routed", "routed", None),
           ("changed", "changed", "changed_rate"), ("usable", "usable", "usable_rate"),
           ("labels", "labels", None), ("consist.", "consistency", None),
           ("|p-.5|", "confidence", None), ("rm pairs", "rm_pairs", None),
           ("rm acc.", "rm_accuracy", None), ("declined", "decline_rate", None),
           ("on-topic", "on_topic_rate", None)]


def used_constitution(run_dir: Path) -> str | None:
    """The constitution the run's generate stage used (its manifest's config)."""
    gen = _stage(run_dir, "generate") or run_dir
    manifest = gen / "manifest.json"
    if not manifest.is_file():
        return None
    return (json.loads(manifest.read_text()).get("config") or {}).get("constitution")


def cells(row: dict[str, Any]) -> list[str]:
    out = []
    for _, key, rate in COLUMNS:
        value = row.get(rate or key)
        if value is None:
            out.append("-")
        elif isinstance(value, float):
            out.append(f"{value:.0%}" if key != "confidence" else f"{value:.3f}")
        else:
            out.append(str(value))
    return out


def format_health(health: dict[str, Any]) -> str:
    rows = health["principles"]
    width = max(len(p) for p in rows)
    lines = [f"{'principle':<{width}}  " + "  ".join(f"{h:>8}" for h, _, _ in COLUMNS)]
    for pid, row in rows.items():
        lines.append(f"{pid:<{width}}  " + "  ".join(f"{c:>8}" for c in cells(row)))
    flagged = [(pid, row["flags"]) for pid, row in rows.items() if row["flags"]]
    if health.get("unlabeled"):
        u = health["unlabeled"]
        lines.append(f"held-out pairs labeled under no principle: {u['rm_pairs']}, reward "
                     f"model accuracy {u['rm_accuracy']:.0%}")
    lines.append("")
    lines += [f"FLAG {pid}: {'; '.join(f)}" for pid, f in flagged] or ["no principle flagged"]
    src = health["sources"]
    lines.append("from: " + ", ".join(f"{k} {v}" for k, v in src.items() if v)
                 + (f" (missing: {', '.join(k for k, v in src.items() if not v)})"
                    if not all(src.values()) else ""))
    return "\n".join(lines)
