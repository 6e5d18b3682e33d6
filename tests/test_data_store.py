"""cai.data.store: Parquet shards + manifest, readable by us and by `datasets`."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from cai.data.store import iter_preferences, read_preferences, write_preferences
from cai.io import DataError
from cai.records import ARROW_SCHEMA, PreferenceRecord, stable_id


def make(i: int, *, p: float = 1.0, source: str = "human", **kw) -> PreferenceRecord:
    prompt = [{"role": "user", "content": f"question {i}"}]
    chosen = [{"role": "assistant", "content": f"good answer {i}"}]
    rejected = [{"role": "assistant", "content": f"bad answer {i}"}]
    return PreferenceRecord(id=stable_id(prompt, chosen, rejected), prompt=prompt, chosen=chosen,
                            rejected=rejected, p_chosen=p, source=source, **kw)


def test_write_read_roundtrip_with_shards_and_manifest(tmp_path):
    recs = [make(i, p=0.75 if i % 2 else 1.0, source="ai-feedback" if i % 2 else "human",
                 principle_ids=["harmless-3"] if i % 2 else [], labeler="smollm" if i % 2 else None,
                 metadata={"k": [i, "é"]}) for i in range(5)]
    manifest = write_preferences(iter(recs), tmp_path / "s", shard_size=2)
    assert manifest["count"] == 5
    assert manifest["schema_version"] == 1 and manifest["format"] == "cai.preferences"
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    assert [re.sub("-[0-9a-f]{8}", "-W", s["file"]) for s in manifest["shards"]] == [
        "part-00000-W.parquet", "part-00001-W.parquet", "part-00002-W.parquet"]
    assert manifest["sources"] == {"ai-feedback": 2, "human": 3}
    assert (manifest["hard_labels"], manifest["soft_labels"]) == (3, 2)
    assert json.loads((tmp_path / "s" / "manifest.json").read_text()) == manifest
    files = [tmp_path / "s" / s["file"] for s in manifest["shards"]]
    assert pq.read_schema(files[0]).remove_metadata().equals(ARROW_SCHEMA)
    assert read_preferences(tmp_path / "s") == recs
    assert read_preferences(files[1]) == recs[2:4]


def test_rewrite_removes_stale_shards(tmp_path):
    write_preferences([make(i) for i in range(5)], tmp_path / "s", shard_size=1)
    m = write_preferences([make(9)], tmp_path / "s", shard_size=1)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["manifest.json", m["shards"][0]["file"]]
    assert read_preferences(tmp_path / "s") == [make(9)]


def test_crash_mid_rewrite_leaves_previous_store_whole(tmp_path):
    old = [make(i) for i in range(4)]
    write_preferences(old, tmp_path / "s", shard_size=2)

    def records():
        yield from [make(10), make(11), make(12)]  # one full shard gets written...
        raise RuntimeError("labeler crashed")

    with pytest.raises(RuntimeError):
        write_preferences(records(), tmp_path / "s", shard_size=2)
    assert read_preferences(tmp_path / "s") == old


def test_empty_store_has_schema(tmp_path):
    manifest = write_preferences([], tmp_path / "e")
    assert manifest["count"] == 0 and [s["count"] for s in manifest["shards"]] == [0]
    assert read_preferences(tmp_path / "e") == []


def test_readable_by_datasets_load_dataset(tmp_path):
    from datasets import load_dataset

    recs = [make(i) for i in range(3)]
    write_preferences(recs, tmp_path / "s", shard_size=2)
    ds = load_dataset("parquet", data_files=str(tmp_path / "s" / "*.parquet"), split="train",
                      cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3
    assert sorted(ds["id"]) == sorted(r.id for r in recs)
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"


def test_reads_jsonl_of_model_dump_and_to_row(tmp_path):
    recs = [make(0, metadata={"a": 1}), make(1)]
    lines = [json.dumps(recs[0].model_dump()), json.dumps(recs[1].to_row())]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    assert read_preferences(tmp_path / "r.jsonl") == recs


def test_bad_stored_row_raises_with_location(tmp_path):
    (tmp_path / "r.jsonl").write_text(json.dumps(make(0).model_dump()) + "\n" + '{"id": "x"}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:2: not a preference record \(prompt: Field required\)"):
        read_preferences(tmp_path / "r.jsonl")
    it = iter_preferences(tmp_path / "r.jsonl")
    assert next(it) == make(0)  # streaming: good rows before the bad one are still read


def test_newer_schema_version_is_refused(tmp_path):
    write_preferences([make(0)], tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["schema_version"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="schema_version 99"):
        read_preferences(tmp_path / "s")
