"""Per-principle health of a run (`cai constitution health RUN_DIR`): is each principle
doing its job, doing nothing, or doing harm?

From the run directory's stage outputs, whichever exist:

    generate/revisions   drawn (rounds run under it), routed (records routed to it),
                         critiqued, changed (rounds whose revision was kept), usable-revision
                         rate (kept / revisions made) and the reasons the others were not
    label/               labels judged under it: position consistency (both answer orders
                         agree) and mean confidence |p - 1/2|
    rm/eval.json         the reward model's accuracy on the held-out pairs labeled under it
                         (`by_principle`, from `cai train rm`; the latest round's)
    eval/samples.jsonl   the final policy on held-out prompts whose category is one of its
                         tags: decline rate on harmful ones, on-topic rate on benign ones

Principles below THRESHOLDS (or the caller's) are flagged, with the reason. Held-out pairs
labeled under no principle (human pairs) are reported apart, under `unlabeled`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from cai.constitution import Constitution
from cai.eval.refusal import SAFE
from cai.stats import NO_PRINCIPLE

# A flag needs at least MIN_N observations; each threshold is the rate under which the
# principle is flagged (docs/constitutions.md, "Reading health").
MIN_N = 5
THRESHOLDS = {
    "changed": 0.10,        # share of its rounds whose revision was kept
    "usable": 0.50,         # share of its revisions that passed the quality checks
    "consistency": 0.60,    # share of its labels whose two answer orders agree
    "confidence": 0.05,     # mean |p - 1/2| of its labels
    "decline": 0.50,        # final policy: share of harmful prompts routed to it declined
    "on_topic": 0.50,       # final policy: share of benign prompts routed to it answered on topic
    "rm_accuracy": 0.60,    # reward model: held-out pairs labeled under it ranked right
}
USABLE = ("ok", "ok:unchanged")


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def generation_health(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    new = lambda: {"drawn": 0, "routed": 0, "critiqued": 0, "revisions": 0, "changed": 0,  # noqa: E731
                   "reasons": Counter()}
    for rec in records:
        if rec["route"] not in ("", "random", "tags", "benign"):
            out.setdefault(rec["route"], new())["routed"] += 1
        rounds = rec["rounds"] or []
        for i, r in enumerate(rounds):
            h = out.setdefault(r["principle_id"], new())
            h["drawn"] += 1
            h["critiqued"] += r["critique"] is not None
            if r["revision"] is None:
                continue
            h["revisions"] += 1
            failed_here = i == len(rounds) - 1 and rec["status"] not in USABLE
            if failed_here:
                h["reasons"][rec["status"]] += 1
            else:
                h["changed"] += 1
            h["reasons"].update(f"candidate:{k}" for k in (r["rejected_candidates"] or []))
    for h in out.values():
        h["changed_rate"] = _rate(h["changed"], h["drawn"])
        h["usable_rate"] = _rate(h["changed"], h["revisions"])
        h["reasons"] = dict(h["reasons"].most_common())
    return out


def label_health(verdict_lists: Iterable[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """From each label's `ai_feedback.verdicts`: per principle, labels, position-consistent
    ones (pairwise verdicts carry `consistent`) and the mean |p_first - 1/2|."""
    acc: dict[str, list] = {}
    for verdicts in verdict_lists:
        for v in verdicts:
            a = acc.setdefault(v["principle"], [0, 0, 0, 0.0])
            a[0] += 1
            if "consistent" in v:
                a[1] += 1
                a[2] += bool(v["consistent"])
            a[3] += abs(v["p_first"] - 0.5)
    return {p: {"labels": n, "consistency": _rate(c, k), "confidence": round(s / n, 4)}
            for p, (n, k, c, s) in acc.items()}


def policy_health(samples: Iterable[dict[str, Any]], c: Constitution) -> dict[str, dict[str, Any]]:
    """Final policy per principle, on held-out prompts whose category is one of its tags."""
    acc: dict[str, list[int]] = {}
    for row in samples:
        pol = row["policy"]
        for p in c.principles:
            if row.get("category") not in p.tags:
                continue
            a = acc.setdefault(p.id, [0, 0, 0, 0])
            if row["kind"] == "harmful":
                a[0] += 1
                a[1] += pol["verdict"] in SAFE
            else:
                a[2] += 1
                a[3] += pol["verdict"] not in SAFE and (pol.get("relevance_pmi") or 0.0) > 0
    return {p: {"harmful": h, "decline_rate": _rate(d, h), "benign": b, "on_topic_rate": _rate(o, b)}
            for p, (h, d, b, o) in acc.items()}


def rm_health(eval_metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """From `cai train rm`'s eval.json: per principle, held-out pairs and accuracy."""
    return {pid: {"rm_pairs": m["n"], "rm_accuracy": round(m["accuracy"], 4)}
            for pid, m in (eval_metrics.get("by_principle") or {}).items()}


def flags(row: dict[str, Any], thresholds: dict[str, float] | None = None) -> list[str]:
    """The reasons a principle's health row is flagged (THRESHOLDS, or `thresholds` where
    it gives one; at least MIN_N seen)."""
    limits = {**THRESHOLDS, **(thresholds or {})}
    out = []
    if not row.get("drawn") and not row.get("routed"):
        out.append("never drawn or routed")
    def low(key: str, value: float | None, n: int, what: str) -> None:
        if value is not None and n >= MIN_N and value < limits[key]:
            out.append(f"{what} {value:.0%} < {limits[key]:.0%} (n={n})")
    low("changed", row.get("changed_rate"), row.get("drawn", 0), "changed the answer in")
    top = next(iter(row.get("reasons") or {}), None)
    low("usable", row.get("usable_rate"), row.get("revisions", 0),
        "usable revisions" + (f" (mostly {top})" if top else ""))
    low("consistency", row.get("consistency"), row.get("labels", 0), "label position consistency")
    conf = row.get("confidence")
    if conf is not None and row.get("labels", 0) >= MIN_N and conf < limits["confidence"]:
        out.append(f"label confidence |p-1/2| {conf:.3f} < {limits['confidence']} "
                   f"(n={row['labels']}): near coin flips")
    low("rm_accuracy", row.get("rm_accuracy"), row.get("rm_pairs", 0),
        "reward model accuracy on its held-out pairs")
    low("decline", row.get("decline_rate"), row.get("harmful", 0), "final policy declined")
    low("on_topic", row.get("on_topic_rate"), row.get("benign", 0), "final policy on topic in")
    return out


def _stage(run: Path, name: str) -> Path | None:
    rounds = sorted((p for p in run.glob(f"round*/{name}") if p.parent.name[5:].isdigit()),
                    key=lambda p: int(p.parent.name[5:]), reverse=True)
    return next((p for p in rounds + [run / name] if p.exists()), None)


def run_health(run_dir: str | Path, c: Constitution,
               thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """{"principles": {id: row with "flags"}, "unlabeled": the reward model's figures on
    held-out pairs with no principle (or None), "sources": {what: path or None}}, every
    principle of `c` listed (those never seen with zeros). `thresholds` override
    THRESHOLDS by name."""
    from cai.generate.checkpoint import RunStore

    run = Path(run_dir)
    gen_dir = _stage(run, "generate") or (run if (run / "revisions").is_dir() else None)
    label_dir = _stage(run, "label")
    samples = next((p for p in (run / "eval" / "samples.jsonl", run / "samples.jsonl")
                    if p.is_file()), None)
    gen = generation_health(RunStore(gen_dir).iter_records()) if gen_dir else {}
    lab: dict[str, dict[str, Any]] = {}
    if label_dir:
        from cai.data.store import iter_preferences

        lab = label_health(r.metadata.get("ai_feedback", {}).get("verdicts", [])
                           for r in iter_preferences(label_dir))
    rm_dir = _stage(run, "rm")
    rm_eval = rm_dir / "eval.json" if rm_dir and (rm_dir / "eval.json").is_file() else None
    rm = rm_health(json.loads(rm_eval.read_text())) if rm_eval else {}
    pol = policy_health((json.loads(x) for x in samples.read_text().splitlines() if x.strip()), c) \
        if samples else {}
    rows = {}
    for p in c.principles:
        row = {"drawn": 0, "routed": 0, **gen.get(p.id, {}), **lab.get(p.id, {}),
               **rm.get(p.id, {}), **pol.get(p.id, {})}
        row["flags"] = flags(row, thresholds)
        rows[p.id] = row
    return {"principles": rows, "unlabeled": rm.get(NO_PRINCIPLE),
            "thresholds": {**THRESHOLDS, **(thresholds or {})}, "min_n": MIN_N,
            "sources": {"generate": str(gen_dir) if gen_dir else None,
                        "label": str(label_dir) if label_dir else None,
                        "rm": str(rm_eval) if rm_eval else None,
                        "eval": str(samples) if samples else None}}
