"""cai.schema: the one message type and conversation check, the one Reject and rejects
writer, the hash helpers, the Arrow message type, the ValidationError wording."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from cai.schema import (BadRow, Message, Reject, arrow_messages, check_conversation,
                        validation_errors, write_rejects)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def test_check_conversation_returns_fresh_dicts_from_dicts_or_models():
    conv = [{"role": "system", "content": " S "}, Message(role="user", content=" hi ")]
    out = check_conversation(conv, ends_with="user")
    assert out == [{"role": "system", "content": " S "}, u(" hi ")]
    assert check_conversation(conv, strip=True)[1] == u("hi")
    out[0]["content"] = "changed"
    assert conv[0]["content"] == " S "


@pytest.mark.parametrize("turns,kwargs,code,reason", [
    ([{"role": "tool", "content": "x"}], {}, "malformed", "message 0: unknown role 'tool'"),
    ([u("q"), {"role": "user"}], {"where": "prompt"}, "malformed",
     "prompt[1]: content must be text, not NoneType"),
    ([u("q"), {"role": "user", "content": "x", "name": "n"}], {}, "malformed",
     "message 1: expected {'role', 'content'}, got {'role': 'user', 'content': 'x', 'name': 'n'}"),
    (["text"], {"code": "bad-messages"}, "bad-messages", "message 0: expected {'role', 'content'}, got 'text'"),
    ([u("q"), {"role": "system", "content": "s"}, u("q")], {}, "malformed",
     "message 1: a system turn may only come first"),
    ([{"role": "system", "content": "s"}, u("q")], {"system": "never"}, "malformed",
     "message 0: system turns are not allowed here"),
    ([u("q"), a("x")], {"ends_with": "user"}, "malformed",
     "must end with a user turn, not an assistant turn"),
    ([u("q")], {"ends_with": "assistant", "where": "chosen"}, "malformed",
     "chosen: must end with an assistant turn, not a user turn"),
    ([u("q"), a("  ")], {"allow_empty": False}, "empty", "message 1 (assistant) is empty"),
    ([], {"where": "prompt"}, "empty", "prompt: must contain at least one message"),
])
def test_check_conversation_problems(turns, kwargs, code, reason):
    with pytest.raises(BadRow) as info:
        check_conversation(turns, **kwargs)
    assert (info.value.code, info.value.reason) == (code, reason)
    assert isinstance(info.value, ValueError)  # callers outside a row loop see a ValueError


def test_system_turn_rules():
    mid = [u("q"), {"role": "system", "content": "s"}, u("again")]
    assert len(check_conversation(mid, system="anywhere")) == 3
    assert check_conversation([u("q"), a("")])[1] == a("")  # blank turns pass unless refused


def test_message_is_the_record_message():
    from cai.records import Message as RecordMessage
    from cai.constitution.schema import ChatMessage

    assert RecordMessage is Message and issubclass(ChatMessage, Message)
    with pytest.raises(ValidationError):
        Message(role="tool", content="x")


def test_rejects_file_has_the_same_fields_for_every_stage(tmp_path):
    from cai.data.importers import import_rows
    from cai.prompts import load_prompts
    from cai.io import iter_rows
    from cai.label import read_pairs

    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": " "}) + "\n{oops\n")
    _, prompt_rejects = load_prompts(tmp_path / "p.jsonl")
    import_rejects = list(import_rows(iter_rows(tmp_path / "p.jsonl")))
    _, pair_rejects = read_pairs(tmp_path / "p.jsonl")
    for rejects in (prompt_rejects, import_rejects, pair_rejects):
        assert [type(r) for r in rejects] == [Reject, Reject]
        write_rejects(rejects, tmp_path / "rejects.jsonl")
        rows = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
        assert set(rows[0]) == {"location", "code", "reason", "row"}
        assert set(rows[1]) == {"location", "code", "reason", "raw"} and rows[1]["raw"] == "{oops"
        assert [r["location"] for r in rows] == ["p.jsonl:1", "p.jsonl:2"]
    assert write_rejects([], tmp_path / "none.jsonl") == 0
    assert (tmp_path / "none.jsonl").read_text() == ""


def test_arrow_messages_type():
    import pyarrow as pa

    t = arrow_messages()
    assert t == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    from cai.generate.checkpoint import REVISION_SCHEMA
    from cai.generate.outputs import SFT_SCHEMA
    from cai.records import ARROW_SCHEMA

    assert ARROW_SCHEMA.field("prompt").type == REVISION_SCHEMA.field("prompt").type \
        == SFT_SCHEMA.field("messages").type == t


def test_validation_errors_wording():
    class M(BaseModel):
        n: int
        inner: dict[str, int]

    with pytest.raises(ValidationError) as info:
        M.model_validate({"n": "x", "inner": {"k": "y"}})
    assert validation_errors(info.value, "cfg.yaml") == [
        "cfg.yaml: n: Input should be a valid integer, unable to parse string as an integer",
        "cfg.yaml: inner.k: Input should be a valid integer, unable to parse string as an integer",
    ]
