"""Precision and recall of the degenerate:unresponsive check on hand-labeled revisions.

    python bench/unresponsive_check.py [tests/data/revision_labels.jsonl] [--threshold 0.0]

Each row of the labels file is a real revision of the embedded model (from the runs in the
README's before/after measurement) with the person's label `unresponsive` (true: it
comments on "the response" or no longer addresses the prompt) and the check's inputs as
measured then: `meta` (the meta-commentary phrase found, or null) and `pmi` (nats/token,
`cai.generate.relevance.pmi` against the next prompt of its run). The check flags a
revision when `meta` is set or `pmi <= threshold`; this prints its precision and recall,
for the pattern and the PMI halves alone too, and a threshold sweep.
"""

from __future__ import annotations

import argparse
import json


def scores(rows, flag):
    tp = sum(flag(r) and r["unresponsive"] for r in rows)
    fp = sum(flag(r) and not r["unresponsive"] for r in rows)
    fn = sum(not flag(r) and r["unresponsive"] for r in rows)
    p = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    return tp, fp, fn, p, rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("labels", nargs="?", default="tests/data/revision_labels.jsonl")
    ap.add_argument("--threshold", type=float, default=0.0)
    a = ap.parse_args()
    rows = [json.loads(x) for x in open(a.labels, encoding="utf-8") if x.strip()]
    pos = sum(r["unresponsive"] for r in rows)
    print(f"{len(rows)} labeled revisions, {pos} unresponsive ({pos / len(rows):.0%}: the "
          "precision of flagging everything)")
    checks = {"check (meta or pmi)": lambda r: bool(r["meta"]) or r["pmi"] <= a.threshold,
              "meta pattern alone": lambda r: bool(r["meta"]),
              "pmi alone": lambda r: r["pmi"] <= a.threshold}
    for name, flag in checks.items():
        tp, fp, fn, p, rec = scores(rows, flag)
        print(f"  {name:<20} threshold {a.threshold}: precision {p:.2f} ({tp}/{tp + fp}), "
              f"recall {rec:.2f} ({tp}/{tp + fn})")
    for th in (-0.1, -0.05, 0.0, 0.05, 0.1, 0.2):
        tp, fp, fn, p, rec = scores(rows, lambda r: bool(r["meta"]) or r["pmi"] <= th)
        print(f"  sweep {th:+.2f}: precision {p:.2f}, recall {rec:.2f}")


if __name__ == "__main__":
    main()
