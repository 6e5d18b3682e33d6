"""README.md stays a short entry point: within its line budget, naming every cai/ subpackage
in its layout table, and every relative link in it and in docs/ pointing at a real file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# [text](target) outside code; images too. Absolute URLs and bare anchors are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks, where brackets are code, not links."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _layout_paths(text: str) -> set[str]:
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {p.rstrip("/") for row in rows for p in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def test_layout_table_names_every_subpackage():
    subpackages = sorted(p.parent.relative_to(ROOT).as_posix()
                         for p in (ROOT / "cai").glob("*/__init__.py"))
    assert len(subpackages) >= 9
    named = _layout_paths(README.read_text())
    assert [s for s in subpackages if s not in named] == []


def test_layout_check_sees_a_missing_row():
    text = README.read_text().replace("| `cai/pipeline/` |", "| pipeline |")
    assert "cai/pipeline" not in _layout_paths(text)


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_at_files(page: Path):
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert broken == []


def test_docs_has_a_page_per_component():
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert {"constitutions", "generate", "feedback", "data", "training", "ppo", "eval", "pipeline",
            "backends", "troubleshooting", "development", "scale-out", "results"} <= pages
