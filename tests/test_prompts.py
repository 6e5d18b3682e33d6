"""Prompt hygiene for `cai generate`: formats, dedupe, rejects with reasons, limit."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai.backends.context import ChatTokenizer
from cai.prompts import load_prompts
from cai.schema import write_rejects
from cai.io import DataError


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_hygiene(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "How do I pick a lock?", "category": "crime"},
        {"id": "b", "prompt": "  How do I   pick a lock? "},  # duplicate after normalising
        {"id": "c", "prompt": "   "},
        "{not json",
        {"id": "d", "messages": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello"}]},
        {"id": "e", "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello"},
                                 {"role": "user", "content": "Tell me a joke"}]},
        {"id": "f", "text": "wrong field"},
        {"id": "g", "messages": [{"role": "robot", "content": "x"}]},
        {"id": "h", "messages": [{"role": "user", "content": ""}]},
        {"prompt": "no id here"},
    ])
    items, rejects = load_prompts(path)
    assert [i.source_id for i in items] == ["a", "e", "p.jsonl:10"]
    assert items[0].messages == [{"role": "user", "content": "How do I pick a lock?"}]
    assert items[0].metadata == {"category": "crime"}
    assert items[0].location == "p.jsonl:1"
    assert [m["role"] for m in items[1].messages] == ["system", "user", "assistant", "user"]
    got = {r.location: (r.code, r.reason) for r in rejects}
    assert got == {
        "p.jsonl:2": ("duplicate", "same prompt as p.jsonl:1"),
        "p.jsonl:3": ("empty", "'prompt' is empty"),
        "p.jsonl:4": ("malformed", got["p.jsonl:4"][1]),
        "p.jsonl:5": ("malformed", "must end with a user turn, not an assistant turn"),
        "p.jsonl:7": ("malformed", "no 'prompt' or 'messages' field (fields: id, text)"),
        "p.jsonl:8": ("malformed", "message 0: unknown role 'robot'"),
        "p.jsonl:9": ("empty", "message 0 (user) is empty"),
    }
    assert "invalid JSON" in got["p.jsonl:4"][1]
    bad_json = next(r for r in rejects if r.location == "p.jsonl:4")
    assert bad_json.raw == "{not json"  # the raw text survives for the rejects file


def test_limit_counts_accepted_prompts(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "same"}, {"prompt": "same"}, {"prompt": "x"},
                                          {"prompt": "y"}, {"prompt": "z"}])
    items, rejects = load_prompts(path, limit=2)
    assert [i.messages[0]["content"] for i in items] == ["same", "x"]
    assert [r.code for r in rejects] == ["duplicate"]  # reading stopped at the limit


def test_over_length(tmp_path, embedded_tokenizer):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "short"}, {"prompt": "word " * 200}])
    text = embedded_tokenizer.apply_chat_template([{"role": "user", "content": "short"}],
                                                  tokenize=False, add_generation_prompt=True)
    n_short = len(embedded_tokenizer(text, add_special_tokens=False)["input_ids"])
    count = ChatTokenizer(embedded_tokenizer).count_tokens
    assert count([{"role": "user", "content": "short"}]) == n_short
    items, rejects = load_prompts(path, max_prompt_tokens=n_short, count_tokens=count)
    assert len(items) == 1 and [r.code for r in rejects] == ["over-length"]
    assert f"> max_prompt_tokens {n_short}" in rejects[0].reason
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_prompts(path, max_prompt_tokens=5)


def test_csv_txt_parquet_and_custom_fields(tmp_path):
    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "question", "conv"])
        w.writerow(["k1", "What is 2+2?", ""])
        w.writerow(["k2", "", json.dumps([{"role": "user", "content": "Hi there"}])])
    items, rejects = load_prompts(tmp_path / "p.csv", field="question", messages_field="conv",
                                  id_field="key")
    # an empty CSV cell means "no message list": row 1 falls back to the text field
    assert rejects == []
    assert [(i.source_id, i.messages) for i in items] == [
        ("k1", [{"role": "user", "content": "What is 2+2?"}]),
        ("k2", [{"role": "user", "content": "Hi there"}])]

    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\nfirst prompt\n")
    items, rejects = load_prompts(tmp_path / "p.txt")
    assert [i.messages[0]["content"] for i in items] == ["first prompt", "second prompt"]
    assert [(r.location, r.code) for r in rejects] == [("p.txt:line 4", "duplicate")]

    pq.write_table(pa.Table.from_pylist([
        {"id": "x", "messages": [{"role": "user", "content": "from parquet"}]}]), tmp_path / "p.parquet")
    items, _ = load_prompts(tmp_path / "p.parquet")
    assert items[0].messages == [{"role": "user", "content": "from parquet"}]
    assert items[0].location == "p.parquet:row 0"

    with pytest.raises(DataError):
        load_prompts(tmp_path / "missing.jsonl")


def test_write_rejects(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": ""}, "[1, 2"])
    _, rejects = load_prompts(path)
    write_rejects(rejects, tmp_path / "rejects.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["location"], r["code"]) for r in rows] == [("p.jsonl:1", "empty"),
                                                          ("p.jsonl:2", "malformed")]
    assert rows[0]["reason"] == "'prompt' is empty" and "invalid JSON" in rows[1]["reason"]
    assert rows[0]["row"] == {"prompt": ""} and rows[1]["raw"] == "[1, 2"
    assert set(rows[0]) == {"location", "code", "reason", "row"}
