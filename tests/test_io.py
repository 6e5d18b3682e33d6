"""cai.io: atomic writes and iter_rows over every supported format."""

from __future__ import annotations

import json
import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai.io import (
    DataError,
    Row,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    iter_rows,
    write_parquet_atomic,
)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_create_dirs_and_leave_no_temp(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a" / "t.txt", "héllo\n")
    atomic_write_json(tmp_path / "a" / "j.json", {"k": [1, "é"]})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "t.txt").read_bytes() == "héllo\n".encode()
    assert json.loads((tmp_path / "a" / "j.json").read_text(encoding="utf-8")) == {"k": [1, "é"]}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin", "j.json", "t.txt"]


def test_atomic_write_gets_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_failed_atomic_write_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half a new file")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_parquet_atomic_roundtrip(tmp_path):
    table = pa.table({"a": [1, 2], "b": ["x", None]})
    write_parquet_atomic(table, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


# --------------------------------------------------------------------------- iter_rows


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_jsonl_rows_errors_and_truncated_last_line(tmp_path):
    p = _write(tmp_path / "data.jsonl",
               b'{"prompt": "a"}\n'
               b"\n"  # blank: skipped, but still counts as line 2
               b'{"prompt": "b",}\n'
               b"[1, 2]\n"
               b"\xff\xfe\n"
               b'{"prompt": "c"}\n'
               b'{"prompt": "d')
    rows = list(iter_rows(p))
    assert [r.location for r in rows] == [f"data.jsonl:{n}" for n in (1, 3, 4, 5, 6, 7)]
    assert rows[0] == Row("data.jsonl:1", data={"prompt": "a"})
    assert rows[1].error == "line 3: invalid JSON: Expecting property name enclosed in double quotes (column 16)"
    assert rows[1].raw == '{"prompt": "b",}'
    assert rows[2].error == "line 4: expected a JSON object, got list"
    assert rows[3].error.startswith("line 5: not UTF-8")
    assert rows[4].data == {"prompt": "c"} and rows[4].ok
    assert rows[5].error == ("line 7: truncated last line (no newline at end of file): "
                             "Unterminated string starting at (column 12)")
    assert rows[5].raw == '{"prompt": "d'


def test_valid_last_line_without_newline_is_fine(tmp_path):
    p = _write(tmp_path / "d.jsonl", b'{"x": 1}\n{"x": 2}')
    assert [r.data for r in iter_rows(p)] == [{"x": 1}, {"x": 2}]


def test_invalid_middle_line_is_not_called_truncated(tmp_path):
    p = _write(tmp_path / "d.jsonl", b'{"x": \n{"x": 2}\n')
    rows = list(iter_rows(p))
    assert rows[0].error.startswith("line 1: invalid JSON")
    assert rows[1].data == {"x": 2}


def test_gzipped_jsonl(tmp_path):
    import gzip

    p = tmp_path / "train.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write(b'{"x": 1}\n{"x": 2}\n')
    assert [(r.location, r.data) for r in iter_rows(p)] == [
        ("train.jsonl.gz:1", {"x": 1}), ("train.jsonl.gz:2", {"x": 2})]


def test_json_array_and_json_lines_under_json_name(tmp_path):
    arr = _write(tmp_path / "a.json", b'[{"x": 1}, 3, {"x": 2}]')
    rows = list(iter_rows(arr))
    assert [r.location for r in rows] == ["a.json:row 0", "a.json:row 1", "a.json:row 2"]
    assert rows[1].error == "row 1: expected a JSON object, got int"
    lines = _write(tmp_path / "l.json", b'{"x": 1}\n{"x": 2}\n')
    assert [r.data for r in iter_rows(lines)] == [{"x": 1}, {"x": 2}]
    broken = _write(tmp_path / "b.json", b'[{"x": 1},')
    with pytest.raises(DataError, match="b.json: not a valid JSON array"):
        iter_rows(broken)


def test_csv_locations_multiline_field_and_wrong_field_count(tmp_path):
    p = _write(tmp_path / "data.csv",
               b'prompt,chosen,rejected\n'
               b'p1,c1,r1\n'
               b'"p2\nspans two lines",c2,r2\n'
               b'\n'
               b'p3,c3\n'
               b'p4,c4,r4\n')
    rows = list(iter_rows(p))
    assert [r.location for r in rows] == ["data.csv:line 2", "data.csv:line 3",
                                          "data.csv:line 6", "data.csv:line 7"]
    assert rows[1].data == {"prompt": "p2\nspans two lines", "chosen": "c2", "rejected": "r2"}
    assert rows[2].error == "line 6: 2 fields, header has 3"
    assert rows[3].data == {"prompt": "p4", "chosen": "c4", "rejected": "r4"}


def test_parquet_rows(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "n": [1, 2, None]}), tmp_path / "d.parquet")
    rows = list(iter_rows(tmp_path / "d.parquet"))
    assert [(r.location, r.data) for r in rows] == [
        ("d.parquet:row 0", {"prompt": "a", "n": 1}),
        ("d.parquet:row 1", {"prompt": "b", "n": 2}),
        ("d.parquet:row 2", {"prompt": "c", "n": None}),
    ]


def test_txt_one_prompt_per_nonempty_line(tmp_path):
    p = _write(tmp_path / "prompts.txt", b"  first prompt \n\n   \nsecond\n")
    assert [(r.location, r.data) for r in iter_rows(p, text_field="question")] == [
        ("prompts.txt:line 1", {"question": "first prompt"}),
        ("prompts.txt:line 4", {"question": "second"}),
    ]


def test_datasets_save_to_disk_dirs(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"prompt": ["a", "b"]}).save_to_disk(str(tmp_path / "ds"))
    assert [(r.location, r.data) for r in iter_rows(tmp_path / "ds")] == [
        ("ds:row 0", {"prompt": "a"}), ("ds:row 1", {"prompt": "b"})]
    DatasetDict({"train": Dataset.from_dict({"prompt": ["t"]}),
                 "test": Dataset.from_dict({"prompt": ["u"]})}).save_to_disk(str(tmp_path / "dd"))
    assert sorted(r.location for r in iter_rows(tmp_path / "dd")) == ["dd[test]:row 0", "dd[train]:row 0"]


def test_directory_of_shards_sorted_and_hidden_skipped(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), d / "a-000.parquet")
    _write(d / "b-001.jsonl", b'{"x": 3}\n')
    _write(d / ".tmp.jsonl", b'{"x": 99}\n')
    _write(d / "README.md", b"not data")
    assert [(r.location, r.data) for r in iter_rows(d)] == [
        ("shards/a-000.parquet:row 0", {"x": 1}),
        ("shards/a-000.parquet:row 1", {"x": 2}),
        ("shards/b-001.jsonl:1", {"x": 3}),
    ]


def test_clear_errors_for_missing_unknown_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file or directory"):
        iter_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"x\.xlsx: unknown data format"):
        iter_rows(_write(tmp_path / "x.xlsx", b"PK"))
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        iter_rows(_write(tmp_path / "bad.parquet", b"definitely not parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: directory holds no dataset"):
        iter_rows(tmp_path / "empty")
    assert issubclass(DataError, ValueError)
