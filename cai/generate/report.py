"""The revision-quality report of a run: what became of each record, and, given hand labels,
how good the revisions are.

    counts per status
    per category: records, pairs (ok), kept unchanged (ok:unchanged), degenerate
        (category: the prompt row's principle_tags_field value when routed by it, else the
        route: the principle a prompt was routed to, "benign", or "random")
    with labels (JSONL rows {"id": record id, "judgement": "better"|"same"|"worse"}, the
        revision compared with the initial response): the share of the run's pairs judged
        better, same, worse, and how many pairs have no label

`cai generate --report -o RUN [--labels FILE]` prints it; every run stores it in its
manifest and prints the status and per-category lines.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

JUDGEMENTS = ("better", "same", "worse")


def category(record: dict[str, Any], tags_field: str | None = None) -> str:
    route = record.get("route") or "random"
    if route == "tags" and tags_field:
        value = json.loads(record.get("metadata") or "{}").get(tags_field)
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return route


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """{record id: judgement} from a JSONL file; rows without a judgement are skipped."""
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        j = row.get("judgement")
        if j is None:
            continue
        if j not in JUDGEMENTS:
            raise ValueError(f"{path}:{n}: judgement must be one of {', '.join(JUDGEMENTS)}, "
                             f"not {j!r}")
        out[str(row["id"])] = j
    return out


def build_report(records: Iterable[dict[str, Any]], *, tags_field: str | None = None,
                 labels: dict[str, str] | None = None) -> dict[str, Any]:
    records = list(records)
    status = Counter(r["status"] for r in records)
    per: dict[str, Counter[str]] = {}
    for r in records:
        c = per.setdefault(category(r, tags_field), Counter())
        c["records"] += 1
        c["pairs"] += r["status"] == "ok"
        c["unchanged"] += r["status"] == "ok:unchanged"
        c["degenerate"] += r["status"].startswith("degenerate")
    report: dict[str, Any] = {
        "records": len(records),
        "status": dict(sorted(status.items())),
        "pairs": status.get("ok", 0),
        "unchanged": status.get("ok:unchanged", 0),
        "categories": {k: dict(v) for k, v in sorted(per.items())},
    }
    if labels is not None:
        pairs = [r["id"] for r in records if r["status"] == "ok"]
        judged = Counter(labels[i] for i in pairs if i in labels)
        n = sum(judged.values())
        report["judged"] = {"labeled": n, "unlabeled": len(pairs) - n,
                            **{j: judged.get(j, 0) for j in JUDGEMENTS},
                            **{f"{j}_share": round(judged.get(j, 0) / n, 3) if n else None
                               for j in JUDGEMENTS}}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = ["revision quality"]
    lines.append("  status    " + (", ".join(f"{k} {v}" for k, v in report["status"].items())
                                   or "none"))
    lines.append(f"  pairs     {report['pairs']} (revised), {report['unchanged']} kept unchanged")
    width = max([len(k) for k in report["categories"]] + [8])
    lines.append(f"  {'category':<{width}}  records  pairs  unchanged  degenerate")
    for k, c in report["categories"].items():
        lines.append(f"  {k:<{width}}  {c['records']:>7}  {c['pairs']:>5}  {c['unchanged']:>9}  "
                     f"{c['degenerate']:>10}")
    j = report.get("judged")
    if j is not None:
        if j["labeled"]:
            lines.append(f"  judged    {j['labeled']} pairs: better {j['better']} "
                         f"({j['better_share']:.0%}), same {j['same']} ({j['same_share']:.0%}), "
                         f"worse {j['worse']} ({j['worse_share']:.0%}); "
                         f"{j['unlabeled']} pairs unlabeled")
        else:
            lines.append(f"  judged    no labels for this run's {j['unlabeled']} pairs")
    return "\n".join(lines)
