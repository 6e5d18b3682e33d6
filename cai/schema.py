"""The shapes every stage shares, each defined once.

- `Message` (role + content) and `check_conversation`, the one set of rules for a chat
  conversation: known roles, text content, where a system turn may stand, how it ends.
  Records, prompt builders, importers, prompt loading, the constitution and `cai serve` all
  use them; backends and prompt builders pass conversations around as plain dicts
  (`Conversation`).
- `BadRow`: why one input row (or pair) cannot be used, with a short `code`.
- `Reject` and `write_rejects`: the rejects file of every stage, one JSON object per line
  with the same fields everywhere: location, code, reason (plus the row, or the raw text
  of a row that did not parse).
- `content_hash` / `stable_id` / `prompt_key`: short content hashes. Record ids and run
  fingerprints are built from them, so their output must never change (existing run
  directories resume by id).
- `arrow_messages()`: the Arrow type of a message list, for every Parquet schema.
- `validation_errors`: how a pydantic ValidationError is worded, one line per error.

Light on purpose (pydantic only; pyarrow is imported on use), so the constitution tools
and `cai --help` stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
# A conversation as backends and prompt builders pass it: [{"role": ..., "content": ...}].
Conversation = list[dict[str, str]]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class BadRow(ValueError):
    """Why one input row cannot be used. `code` groups reasons in reports and rejects files
    (e.g. "malformed", "empty", "duplicate", "identical"); `reason` says it to a person."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _article(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"


def check_conversation(
    turns: Iterable[Any],
    *,
    where: str = "",
    ends_with: Role | None = None,
    system: Literal["first", "never", "anywhere"] = "first",
    allow_empty: bool = True,
    strip: bool = False,
    code: str = "malformed",
) -> Conversation:
    """Check a conversation and return it as fresh dicts.

    `turns`: dicts or `Message`-like models. `where` names the field in messages
    ("prompt[1]: ..."); without it a turn is "message 1". `ends_with`: the role the last
    turn must have. `system`: where a system turn may stand. `allow_empty=False` refuses
    blank turns (code "empty"); `strip` strips each content. Any other problem raises
    `BadRow(code, reason)`."""
    out: Conversation = []
    for i, m in enumerate(turns):
        at = f"{where}[{i}]" if where else f"message {i}"
        if isinstance(m, BaseModel):
            role, content = getattr(m, "role", None), getattr(m, "content", None)
        elif isinstance(m, dict) and "role" in m and not set(m) - {"role", "content"}:
            role, content = m["role"], m.get("content")
        else:
            raise BadRow(code, f"{at}: expected {{'role', 'content'}}, got {m!r:.80}")
        if role not in ROLES:
            raise BadRow(code, f"{at}: unknown role {role!r}")
        if not isinstance(content, str):
            raise BadRow(code, f"{at}: content must be text, not {type(content).__name__}")
        if role == "system" and system == "never":
            raise BadRow(code, f"{at}: system turns are not allowed here")
        if role == "system" and system == "first" and i > 0:
            raise BadRow(code, f"{at}: a system turn may only come first")
        if not allow_empty and not content.strip():
            raise BadRow("empty", f"{at} ({role}) is empty")
        out.append({"role": role, "content": content.strip() if strip else content})
    prefix = f"{where}: " if where else ""
    if not out:
        raise BadRow("empty", f"{prefix}must contain at least one message")
    if ends_with and out[-1]["role"] != ends_with:
        raise BadRow(code, f"{prefix}must end with {_article(ends_with)} turn, not "
                           f"{_article(out[-1]['role'])} turn")
    return out


class Reject(BaseModel):
    """One input (row, pair, prompt) that was not used, and why: one line of a rejects file."""

    location: str  # file:line N / file:row N, or a pair's location
    code: str
    reason: str
    row: Any = None  # the parsed row
    raw: str | None = None  # the text of a row that did not parse


def write_rejects(rejects: Iterable[Reject], path: str | os.PathLike) -> int:
    """The rejects file: one JSON object per line, written atomically (also when empty, so
    a rerun never leaves a stale one). Returns the number written."""
    from cai.io import atomic_write_jsonl

    return atomic_write_jsonl(path, (r.model_dump(mode="json", exclude_none=True) for r in rejects))


def content_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of `obj` as canonical JSON (sorted keys, no spaces; a
    value JSON has no form for, such as a Path, as its text)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def stable_id(*parts: Any) -> str:
    """A short content hash of JSON-serialisable parts; equal inputs give equal ids."""
    return content_hash(list(parts))


def prompt_key(prompt: Iterable[Any]) -> str:
    """Identity of a prompt for dedupe and leak-free splits (whitespace-normalised)."""
    turns = [
        (m.role, " ".join(m.content.split())) if isinstance(m, BaseModel)
        else (m["role"], " ".join(m["content"].split()))
        for m in prompt
    ]
    return stable_id(turns)


def arrow_messages() -> "pa.DataType":
    """The Arrow type of a message list: list<struct<role: string, content: string>>."""
    import pyarrow as pa

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def validation_errors(e: ValidationError, where: str = "") -> list[str]:
    """One line per error: `where: dotted.location: message`; the location is left out
    for a whole-model check, which has none."""
    prefix = f"{where}: " if where else ""
    lines = []
    for err in e.errors():
        loc = ".".join(map(str, err["loc"]))
        lines.append(f"{prefix}{loc}: {err['msg']}" if loc else f"{prefix}{err['msg']}")
    return lines
