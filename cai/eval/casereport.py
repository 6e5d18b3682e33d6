"""Constitution test results as a pytest-like table, pass rates per principle and kind,
and JUnit XML (the format CI systems read)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from typing import Sequence

from cai.eval.casetests import CaseResult

KINDS = ("behaviour", "critique", "preference")


def pass_rates(results: Sequence[CaseResult]) -> dict[str, dict[str, list[int]]]:
    """{principle: {kind | "all": [passed, total]}}, principles in first-seen order."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in results:
        row = out.setdefault(r.principle, defaultdict(lambda: [0, 0]))
        for key in (r.case.kind, "all"):
            row[key][0] += r.passed
            row[key][1] += 1
    return out


def kind_rates(results: Sequence[CaseResult]) -> dict[str, list[int]]:
    out = {k: [0, 0] for k in KINDS}
    for r in results:
        out[r.case.kind][0] += r.passed
        out[r.case.kind][1] += 1
    return {k: v for k, v in out.items() if v[1]}


def below(results: Sequence[CaseResult], min_pass: float) -> list[str]:
    """Principles whose pass rate is under `min_pass`."""
    return [p for p, row in pass_rates(results).items() if row["all"][0] < min_pass * row["all"][1]]


def _cell(pt: list[int] | None) -> str:
    return "-" if not pt else f"{pt[0]}/{pt[1]}"


def format_results(results: Sequence[CaseResult], min_pass: float) -> str:
    lines = []
    width = max([len(r.principle) for r in results] + [9])
    for r in results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.principle:<{width}}  "
                     f"{r.case.kind:<10}  {r.name}" + ("" if r.passed else f"\n      {r.detail}"
                                                        f"  [{r.case.location}]"))
    lines += ["", f"{'principle':<{width}}  {'behaviour':>9}  {'critique':>8}  "
                  f"{'preference':>10}  {'pass rate':>9}"]
    for p, row in pass_rates(results).items():
        rate = row["all"][0] / row["all"][1]
        flag = "  < min-pass" if rate < min_pass else ""
        lines.append(f"{p:<{width}}  {_cell(row.get('behaviour')):>9}  "
                     f"{_cell(row.get('critique')):>8}  {_cell(row.get('preference')):>10}  "
                     f"{rate:>9.0%}{flag}")
    kinds = kind_rates(results)
    lines.append("by kind: " + ", ".join(f"{k} {v[0]}/{v[1]} ({v[0] / v[1]:.0%})"
                                         for k, v in kinds.items()))
    passed = sum(r.passed for r in results)
    low = below(results, min_pass)
    lines.append(f"== {passed} passed, {len(results) - passed} failed; "
                 + (f"{len(low)} principle(s) below --min-pass {min_pass:g}: {', '.join(low)}"
                    if low else f"every principle at or above --min-pass {min_pass:g}") + " ==")
    return "\n".join(lines)


def junit_xml(results: Sequence[CaseResult], suite: str) -> str:
    """One <testsuite> per principle, one <testcase> per case; failures carry the detail."""
    root = ET.Element("testsuites", name=suite, tests=str(len(results)),
                      failures=str(sum(not r.passed for r in results)))
    suites: dict[str, ET.Element] = {}
    for r in results:
        s = suites.get(r.principle)
        if s is None:
            s = suites[r.principle] = ET.SubElement(root, "testsuite", name=f"{suite}.{r.principle}",
                                                     tests="0", failures="0")
        s.set("tests", str(int(s.get("tests")) + 1))
        tc = ET.SubElement(s, "testcase", classname=f"{suite}.{r.principle}.{r.case.kind}",
                           name=r.name, file=r.case.location.rsplit(":", 1)[0])
        if not r.passed:
            s.set("failures", str(int(s.get("failures")) + 1))
            ET.SubElement(tc, "failure", message=r.detail).text = r.case.location
        else:
            ET.SubElement(tc, "system-out").text = r.detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
