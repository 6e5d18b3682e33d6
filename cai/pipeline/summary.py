"""The end-of-run summary, read from the stage manifests alone, so a run that had nothing to
do prints the same summary as the run that did the work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.pipeline.manifest import read_manifest


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def precision_line(precision: dict[str, str]) -> str:
    """The steps' precision and why, once when they agree, else per step."""
    if len(set(precision.values())) == 1:
        return next(iter(precision.values()))
    return " | ".join(f"{key} {why}" for key, why in precision.items())


def format_summary(steps: list[Any], results: dict[str, str] | None = None,
                   run_dir: Path | None = None) -> str:
    """One line per step (what it made, how long it took when it ran), then what the last
    stage to report (eval) says: the report's path and its before/after table."""
    results = results or {}
    width = max((len(s.key) for s in steps), default=5)
    lines = [f"{'stage':<{width}}  {'this run':<12}  {'took':>8}  result"]
    total = 0.0
    report_lines: list[str] = []
    precision: dict[str, str] = {}  # step -> the precision it trained in, and why
    engines: dict[str, str] = {}  # step -> its engine's dtype, and why
    for step in steps:
        m = read_manifest(step.dir) or {}
        summary = m.get("summary") if isinstance(m.get("summary"), dict) else {}
        secs = m.get("seconds")
        total += secs or 0.0
        if isinstance(summary.get("precision"), str):
            precision[step.key] = summary["precision"]
        if isinstance(summary.get("engine_precision"), str):
            engines[step.key] = summary["engine_precision"]
        status = m.get("status", "not run")
        brief = step.stage.brief(summary) if status == "done" else (m.get("error") or status)
        lines.append(f"{step.key:<{width}}  {results.get(step.key, '-'):<12}  "
                     f"{_seconds(secs):>8}  {brief}")
        final = getattr(step.stage, "final", None)
        if final is not None and status == "done":
            report_lines = final(summary, step.dir)
    lines.append(f"{'':<{width}}  {'':<12}  {_seconds(total):>8}  total stage time")
    if precision:
        lines.append("training precision: " + precision_line(precision))
    if engines:
        lines.append("engine precision: " + precision_line(engines))
    if run_dir is not None:
        lines.append(f"outputs: {run_dir}")
    return "\n".join(lines + report_lines)
