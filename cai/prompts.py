"""Prompts in: any data file `cai.io.iter_rows` reads, as chat conversations, cleaned.

A row gives its conversation either as a message list (`messages_field`, or a list under
`field`) or as text (`field`, one user turn). What cannot be used becomes a
`cai.schema.Reject` with a code and a reason, never an exception and never a silent drop:

    malformed     the row did not parse, or has no usable prompt/messages
    empty         the prompt (or a turn of it) is blank
    duplicate     the same conversation (whitespace-normalised, `prompt_key`) came earlier
    over-length   more than `max_prompt_tokens` tokens (as the model reads it, chat
                  template included)
    too-deep,     over a bound of `cai.limits` (nesting depth, bytes per row)
    too-large

`limit` counts accepted prompts, in input order; reading stops once it is reached.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from cai import limits
from cai.io import iter_rows
from cai.schema import BadRow, Conversation, Reject, check_conversation, prompt_key, write_rejects

CODES = ("malformed", "empty", "duplicate", "over-length", "too-deep", "too-large")


class PromptItem(BaseModel):
    """One accepted prompt: a conversation ending in a user turn."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, str]]
    source_id: str = Field(description="the row's id field, else its location")
    location: str = Field(description="file:line N / file:row N of the input row")
    key: str = Field(description="prompt_key(messages): identity for dedupe")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the row's other fields")


def _conversation(row: dict[str, Any], field: str, messages_field: str) -> list[dict[str, str]]:
    value = row.get(messages_field)
    if isinstance(value, str) and not value.strip():
        value = None  # an empty CSV cell: no message list
    if isinstance(value, str):  # CSV cells hold message lists as JSON text
        try:
            value = limits.loads(value, repr(messages_field))
        except limits.LimitError as e:
            raise BadRow(e.code, str(e)) from None
        except json.JSONDecodeError:
            raise BadRow("malformed", f"{messages_field!r} is text, not a JSON message list") from None
    if value is None:
        value = row.get(field)
    if value is None:
        raise BadRow("malformed", f"no {field!r} or {messages_field!r} field "
                                  f"(fields: {', '.join(map(str, row)) or 'none'})")
    if isinstance(value, str):
        if not value.strip():
            raise BadRow("empty", f"{field!r} is empty")
        return [{"role": "user", "content": value.strip()}]
    if isinstance(value, dict):  # a single message
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRow("malformed" if value else "empty",
                     f"expected text or a list of messages, got {type(value).__name__}")
    return check_conversation(value, ends_with="user", allow_empty=False, strip=True)


def load_prompts(
    path: str | os.PathLike,
    *,
    field: str = "prompt",
    messages_field: str = "messages",
    id_field: str = "id",
    max_prompt_tokens: int | None = None,
    count_tokens: Callable[[Conversation], int | None] | None = None,
    limit: int | None = None,
) -> tuple[list[PromptItem], list[Reject]]:
    """(accepted prompts in input order, rejects). `count_tokens`: how many tokens the model
    reads for a prompt (`Backend.count_tokens`, `ChatTokenizer.count_tokens`), needed with
    `max_prompt_tokens`. Raises `cai.io.DataError` only when the input cannot be read at
    all (missing file, unknown format)."""
    if max_prompt_tokens is not None and count_tokens is None:
        raise ValueError("max_prompt_tokens needs a tokenizer to count prompt tokens")
    items: list[PromptItem] = []
    rejects: list[Reject] = []
    first_seen: dict[str, str] = {}
    if limit is not None and limit <= 0:
        return items, rejects
    for row in iter_rows(path, text_field=field):
        if row.error:
            rejects.append(Reject(location=row.location, code=row.code or "malformed",
                                  reason=row.error, raw=row.raw))
            continue
        data = row.data or {}
        try:
            messages = _conversation(data, field, messages_field)
            key = prompt_key(messages)
            if key in first_seen:
                raise BadRow("duplicate", f"same prompt as {first_seen[key]}")
            if max_prompt_tokens is not None:
                n = count_tokens(messages)
                if n is not None and n > max_prompt_tokens:
                    raise BadRow("over-length", f"{n} tokens > max_prompt_tokens {max_prompt_tokens}")
        except BadRow as e:
            rejects.append(Reject(location=row.location, code=e.code, reason=e.reason, row=data))
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


__all__ = ["CODES", "PromptItem", "Reject", "load_prompts", "write_rejects"]
