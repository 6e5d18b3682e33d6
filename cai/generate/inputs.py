"""Prompts in: any data file `cai.io.iter_rows` reads, as chat conversations, cleaned.

A row gives its conversation either as a message list (`messages_field`, or a list under
`field`) or as text (`field`, one user turn). What cannot be used becomes a `Reject`
with a reason, never an exception and never a silent drop:

    malformed     the row did not parse, or has no usable prompt/messages
    empty         the prompt (or a turn of it) is blank
    duplicate     the same conversation (whitespace-normalised, `prompt_key`) came earlier
    over-length   more than `max_prompt_tokens` tokens (as the model sees it, chat template
                  included when the tokenizer has one)
    too-deep,     over a bound of `cai.limits` (nesting depth, bytes per row)
    too-large

`limit` counts accepted prompts, in input order; reading stops once it is reached.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai import limits
from cai.io import atomic_open, iter_rows
from cai.records import prompt_key

ROLES = ("system", "user", "assistant")
REASONS = ("malformed", "empty", "duplicate", "over-length", "too-deep", "too-large")


class PromptItem(BaseModel):
    """One accepted prompt: a conversation ending in a user turn."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, str]]
    source_id: str = Field(description="the row's id field, else its location")
    location: str = Field(description="file:line N / file:row N of the input row")
    key: str = Field(description="prompt_key(messages): identity for dedupe")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the row's other fields")


class Reject(BaseModel):
    """One input row that was not used, and why."""

    model_config = ConfigDict(extra="forbid")

    location: str
    reason: str = Field(description="one of REASONS")
    detail: str = ""
    data: Any = None  # the parsed row, or the raw text of a row that did not parse


class _Bad(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _conversation(row: dict[str, Any], field: str, messages_field: str) -> list[dict[str, str]]:
    value = row.get(messages_field)
    if isinstance(value, str) and not value.strip():
        value = None  # an empty CSV cell: no message list
    if isinstance(value, str):  # CSV cells hold message lists as JSON text
        try:
            value = limits.loads(value, repr(messages_field))
        except limits.LimitError as e:
            raise _Bad(e.code, str(e)) from None
        except json.JSONDecodeError:
            raise _Bad("malformed", f"{messages_field!r} is text, not a JSON message list") from None
    if value is None:
        value = row.get(field)
    if value is None:
        raise _Bad("malformed", f"no {field!r} or {messages_field!r} field "
                                f"(fields: {', '.join(map(str, row)) or 'none'})")
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("empty", f"{field!r} is empty")
        return [{"role": "user", "content": value.strip()}]
    if isinstance(value, dict):  # a single message
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Bad("malformed" if value else "empty",
                   f"expected text or a list of messages, got {type(value).__name__}")
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _Bad("malformed", f"message {i}: expected {{'role', 'content'}}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise _Bad("malformed", f"message {i}: unknown role {role!r}")
        if not isinstance(content, str):
            raise _Bad("malformed", f"message {i}: content is {type(content).__name__}, not text")
        if not content.strip():
            raise _Bad("empty", f"message {i} ({role}) is empty")
        if role == "system" and i > 0:
            raise _Bad("malformed", f"message {i}: a system turn may only come first")
        turns.append({"role": role, "content": content.strip()})
    if turns[-1]["role"] != "user":
        raise _Bad("malformed", f"the last turn is {turns[-1]['role']!r}; a prompt must end "
                                "with a user turn")
    return turns


def count_prompt_tokens(messages: list[dict[str, str]], tokenizer: Any) -> int:
    """Tokens the model reads for `messages`: the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_prompts(
    path: str | os.PathLike,
    *,
    field: str = "prompt",
    messages_field: str = "messages",
    id_field: str = "id",
    max_prompt_tokens: int | None = None,
    tokenizer: Any = None,
    limit: int | None = None,
) -> tuple[list[PromptItem], list[Reject]]:
    """(accepted prompts in input order, rejects). Raises `cai.io.DataError` only when the
    input cannot be read at all (missing file, unknown format)."""
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer")
    items: list[PromptItem] = []
    rejects: list[Reject] = []
    first_seen: dict[str, str] = {}
    if limit is not None and limit <= 0:
        return items, rejects
    for row in iter_rows(path, text_field=field):
        if row.error:
            rejects.append(Reject(location=row.location, reason=row.code or "malformed",
                                  detail=row.error, data=row.raw))
            continue
        data = row.data or {}
        try:
            messages = _conversation(data, field, messages_field)
            key = prompt_key(messages)
            if key in first_seen:
                raise _Bad("duplicate", f"same prompt as {first_seen[key]}")
            if max_prompt_tokens is not None:
                n = count_prompt_tokens(messages, tokenizer)
                if n > max_prompt_tokens:
                    raise _Bad("over-length", f"{n} tokens > max_prompt_tokens {max_prompt_tokens}")
        except _Bad as e:
            rejects.append(Reject(location=row.location, reason=e.reason, detail=e.detail,
                                  data=data))
            continue
        first_seen[key] = row.location
        sid = data.get(id_field)
        metadata = {k: v for k, v in data.items() if k not in (field, messages_field, id_field)}
        items.append(PromptItem(messages=messages, location=row.location, key=key,
                                source_id=str(sid) if sid not in (None, "") else row.location,
                                metadata=metadata))
        if limit is not None and len(items) >= limit:
            break
    return items, rejects


def write_rejects(rejects: list[Reject], path: str | os.PathLike) -> None:
    """One JSON object per line (location, reason, detail, data), written atomically."""
    with atomic_open(path) as f:
        for r in rejects:
            f.write(json.dumps(r.model_dump(mode="json"), ensure_ascii=False, default=str) + "\n")
