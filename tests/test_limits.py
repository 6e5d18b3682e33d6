"""Hostile input is refused, not obeyed: a YAML alias bomb and a JSON row nested 100,000
deep each give a located error within a second; the other rows of the file still load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai import limits
from cai.cli import app
from cai.config import ConfigError, read_section
from cai.constitution import ConstitutionError, load_constitution
from cai.data.importers import import_file, import_rows
from cai.prompts import load_prompts
from cai.io import iter_rows
from cai.label.inputs import read_pairs

DEEP = 100_000


def billion_laughs(levels: int = 9, fanout: int = 9) -> str:
    """The classic bomb: level k is a list of `fanout` aliases to level k-1 (9**9 strings)."""
    lines = ["schema: 1", "name: bomb", f"a0: &a0 [{', '.join(['lol'] * fanout)}]"]
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_small_and_refused_at_the_alias(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 600
    start = time.perf_counter()
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert time.perf_counter() - start < 1.0
    [error] = info.value.errors
    # 9 + 81 + ... : the alias that crosses 100,000 expanded nodes is on level 6 (a5's list
    # holds 9 aliases of a4, each 1 + 9 * (1 + 9 * (1 + 9 * (1 + 9 * 10))) = 7,381 nodes big;
    # the nodes before it total 1 + 10 + 91 + 820 + 7,381 + ... ).
    text = path.read_text().splitlines()
    assert "alias *a" in error.message and "100,000 nodes" in error.message
    assert text[error.line - 1][error.column - 1] == "*"  # it points at an alias


def test_cli_validate_names_file_line_and_column(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["constitution", "validate", str(path)])
    assert time.perf_counter() - start < 1.0
    assert result.exit_code == 1
    assert f"bomb.yaml:" in result.output and "alias *a" in result.output


def test_pipeline_yaml_goes_through_the_same_cap(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(billion_laughs() + "generate:\n  prompts: p.jsonl\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"pipeline\.yaml:\d+:\d+: alias \*a"):
        read_section(path, "generate")
    assert time.perf_counter() - start < 1.0


def test_anchors_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("""\
schema: 1
name: anchors
version: "1"
description: x- anchors merged into principles
x-common: &common
  revision_request: Rewrite your response kindly.
  comparison: Which response is kinder?
principles:
  - <<: *common
    id: one
    critique_request: Is your last response unkind?
  - <<: *common
    id: two
    critique_request: Is your last response dismissive?
""")
    c = load_constitution(path)
    assert [p.revision_request for p in c.principles] == ["Rewrite your response kindly."] * 2


def test_yaml_nesting_depth_is_bounded(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("schema: 1\nname: deep\nx-deep: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    [error] = info.value.errors
    assert "deeper than 64" in error.message and error.line == 3


def _deep_row() -> str:
    return '{"prompt": ' + "[" * DEEP + "]" * DEEP + ', "chosen": "a", "rejected": "b"}'


def _hostile_file(path: Path) -> Path:
    rows = [json.dumps({"prompt": "first", "chosen": "a", "rejected": "b"}),
            _deep_row(),
            json.dumps({"prompt": "third", "chosen": "a", "rejected": "b"}),
            json.dumps({"prompt": "x" * (limits.MAX_ROW_BYTES + 10), "chosen": "a", "rejected": "b"}),
            json.dumps({"prompt": "fifth", "chosen": "a", "rejected": "b"})]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_data_import_rejects_the_deep_row_and_goes_on(tmp_path):
    src = _hostile_file(tmp_path / "rows.jsonl")
    start = time.perf_counter()
    items = list(import_rows(iter_rows(src)))
    assert time.perf_counter() - start < 1.0  # reading and judging; the store write is apart
    assert [type(i).__name__ for i in items] == ["PreferenceRecord", "Reject", "PreferenceRecord",
                                                 "Reject", "PreferenceRecord"]
    report = import_file(src, tmp_path / "store")
    assert report.imported == 3
    rejects = [json.loads(line) for line in (tmp_path / "store/rejects.jsonl").read_text().splitlines()]
    assert [(r["location"], r["code"]) for r in rejects] == [("rows.jsonl:2", "too-deep"),
                                                            ("rows.jsonl:4", "too-large")]
    assert len(rejects[1]["raw"]) < 300  # the rejects file keeps a head, not the megabytes


def test_every_reader_applies_the_bounds(tmp_path):
    src = _hostile_file(tmp_path / "rows.jsonl")
    items, rejects = load_prompts(src)
    assert [i.messages[0]["content"] for i in items] == ["first", "third", "fifth"]
    assert [(r.location, r.code) for r in rejects] == [("rows.jsonl:2", "too-deep"),
                                                         ("rows.jsonl:4", "too-large")]
    pairs, rejected = read_pairs(src)
    assert len(pairs) == 3
    assert [(r.location, r.code) for r in rejected] == [("rows.jsonl:2", "too-deep"),
                                                        ("rows.jsonl:4", "too-large")]


def test_json_array_locates_the_deep_item(tmp_path):
    src = tmp_path / "rows.json"
    src.write_text("[" + ", ".join([json.dumps({"prompt": "a"}), '{"prompt": ' + "[" * DEEP
                                    + "]" * DEEP + "}", json.dumps({"prompt": "c"})]) + "]")
    rows = list(iter_rows(src))
    assert [(r.location, r.code, (r.data or {}).get("prompt")) for r in rows] == [
        ("rows.json:row 0", None, "a"), ("rows.json:row 1", "too-deep", None),
        ("rows.json:row 2", None, "c")]


def test_json_in_a_csv_cell_is_bounded(tmp_path):
    src = tmp_path / "rows.csv"
    deep = "[" * 1000 + "]" * 1000
    src.write_text(f'messages\n"{deep}"\n"[{{""role"": ""user"", ""content"": ""hi""}}]"\n')
    items, rejects = load_prompts(src)
    assert [i.messages for i in items] == [[{"role": "user", "content": "hi"}]]
    assert [(r.location, r.code) for r in rejects] == [("rows.csv:line 2", "too-deep")]


@pytest.mark.parametrize("text,depth", [("{}", 1), ('[[1], {"a": [2]}]', 3),
                                        ('{"a": "[[[[[[[[[[" }', 1)])
def test_json_depth_by_hand(text, depth, monkeypatch):
    monkeypatch.setattr(limits, "MAX_DEPTH", 0)  # force the exact scan, not the fast bound
    assert limits.json_depth(text) == depth


def test_check_value_bounds_parsed_rows():
    nested: list = []
    for _ in range(limits.MAX_DEPTH - 2):
        nested = [nested]
    limits.check_value({"x": nested})  # 64 levels: the row and 63 lists
    with pytest.raises(limits.LimitError, match="deeper than 64"):
        limits.check_value({"x": [nested]})
    with pytest.raises(limits.LimitError, match="over the limit"):
        limits.check_value({"x": "y" * (limits.MAX_ROW_BYTES + 1)})
