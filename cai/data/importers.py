"""Import human preference data into `PreferenceRecord`s: HH-RLHF transcripts, plain
prompt/chosen/rejected rows, and TRL's conversational preference formats.

Every input row ends up either as a record or as a line in the rejects file with its
location, a reason and the original row (or raw text), so nothing is silently dropped.

HH transcripts ("\\n\\nHuman: …\\n\\nAssistant: …"): text before the first turn marker is a
system message (the Anthropic text-completion convention, and how `export --format hh`
writes system turns). Turn contents are kept exactly, except the single space after
"Human:"/"Assistant:", which the marker owns.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, ValidationError

from cai import limits
from cai.io import Row, iter_rows
from cai.records import PreferenceRecord
from cai.schema import (BadRow, Conversation, Reject, check_conversation, stable_id,
                        validation_errors, write_rejects)

Format = Literal["auto", "hh", "plain", "trl"]
FORMATS: tuple[str, ...] = ("auto", "hh", "plain", "trl")

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
# Columns with a meaning in plain/TRL rows; anything else is kept under metadata["extra"].
_KNOWN = {"prompt", "chosen", "rejected", "p_chosen", "label", "id", "source",
          "principle_ids", "labeler", "metadata"}


class ImportReport(BaseModel):
    source: str
    format: str
    rows: int = 0
    imported: int = 0
    rejected: int = 0
    formats: dict[str, int] = {}  # rows imported per detected format
    reasons: dict[str, int] = {}  # rejects per code
    out_dir: str | None = None
    rejects_path: str | None = None


# --------------------------------------------------------------------------- HH transcripts


def parse_transcript(text: str) -> Conversation:
    """"\\n\\nHuman: a\\n\\nAssistant: b" -> [{"role": "user", ...}, {"role": "assistant", ...}]."""
    parts = _TURN.split(text)
    preamble, turns = parts[0], parts[1:]
    if not turns:
        raise BadRow("no-turns", "no 'Human:' or 'Assistant:' turn")
    messages: Conversation = []
    if preamble.strip():
        messages.append({"role": "system", "content": preamble})
    for marker, content in zip(turns[0::2], turns[1::2]):
        messages.append({"role": _HH_ROLE[marker], "content": content})
    return messages


def to_transcript(messages: Iterable[dict[str, str]]) -> str:
    """Inverse of `parse_transcript`. A system turn is only representable as the first turn."""
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "system":
            if i:
                raise ValueError("a system turn after the first cannot be written as an HH transcript")
            out.append(m["content"])
        else:
            out.append(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}")
    return "".join(out)


# --------------------------------------------------------------------------- pair helpers


def split_shared_prefix(chosen: Conversation, rejected: Conversation
                        ) -> tuple[Conversation, Conversation, Conversation]:
    """Longest common turn prefix ending with a user turn -> (prompt, chosen rest, rejected rest)."""
    if chosen == rejected:
        raise BadRow("identical", "chosen and rejected are identical")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    k = n
    while k and chosen[k - 1]["role"] != "user":
        k -= 1
    if not k:
        raise BadRow("no-shared-prompt", "chosen and rejected share no Human turn to use as the prompt")
    return chosen[:k], chosen[k:], rejected[k:]


def _check_answer(side: str, turns: Conversation, hh: bool) -> None:
    turn = "'Assistant:' turn" if hh else "assistant turn"
    if not turns:
        raise BadRow("no-answer", f"{side}: no {turn} after the prompt")
    if turns[-1]["role"] != "assistant":
        raise BadRow("no-answer", f"{side}: ends with a {turns[-1]['role']} turn, not an {turn}")
    if not turns[-1]["content"].strip():
        what = "final Assistant answer" if hh else "final assistant answer"
        raise BadRow("empty-answer", f"{side}: empty {what}")


def _messages(value: Any, field: str, default_role: str) -> Conversation:
    """A string (one turn of `default_role`) or a list of {"role", "content"} dicts."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, (list, tuple)):
        raise BadRow("bad-messages", f"{field}: expected a string or a message list, got "
                                       f"{type(value).__name__}")
    if not value:
        raise BadRow("bad-messages", f"{field}: empty message list")
    return check_conversation(value, where=field, system="anywhere", code="bad-messages")


def _p_chosen(data: dict[str, Any]) -> float:
    """`p_chosen`, else `label` (bool or number in [0, 1]: probability chosen is better)."""
    values = []
    for key in ("p_chosen", "label"):
        v = data.get(key)
        if v is None or v == "":
            continue
        if isinstance(v, str):
            lowered = v.strip().lower()
            v = {"true": 1.0, "false": 0.0}.get(lowered, v)
        try:
            p = float(v)
        except (TypeError, ValueError):
            raise BadRow("bad-label", f"{key}: not a probability: {v!r:.40}") from None
        if math.isnan(p) or not 0.0 <= p <= 1.0:
            raise BadRow("bad-label", f"{key}: {p} is outside [0, 1]")
        values.append((key, p))
    if len(values) == 2 and values[0][1] != values[1][1]:
        raise BadRow("bad-label", f"p_chosen {values[0][1]} and label {values[1][1]} disagree")
    return values[0][1] if values else 1.0


def _require(data: dict[str, Any], *fields: str) -> None:
    for f in fields:
        if data.get(f) is None:
            raise BadRow("missing-field", f"missing field {f!r}")


def detect_format(data: dict[str, Any]) -> str:
    # A null prompt counts as absent: columnar sources give every row every column.
    if data.get("prompt") is not None:
        return "plain"
    if isinstance(data.get("chosen"), str) and isinstance(data.get("rejected"), str):
        return "hh"
    return "trl"


# --------------------------------------------------------------------------- rows -> records


def _pair_hh(data: dict[str, Any]) -> tuple[Conversation, Conversation, Conversation]:
    _require(data, "chosen", "rejected")
    sides = {}
    for side in ("chosen", "rejected"):
        if not isinstance(data[side], str):
            raise BadRow("bad-messages", f"{side}: expected a transcript string, got "
                                           f"{type(data[side]).__name__}")
        try:
            turns = parse_transcript(data[side])
        except BadRow as e:
            raise BadRow(e.code, f"{side}: {e.reason}") from None
        if not any(t["role"] == "assistant" for t in turns):
            raise BadRow("no-answer", f"{side}: no 'Assistant:' turn")
        sides[side] = turns
    prompt, chosen, rejected = split_shared_prefix(sides["chosen"], sides["rejected"])
    _check_answer("chosen", chosen, hh=True)
    _check_answer("rejected", rejected, hh=True)
    return prompt, chosen, rejected


def _pair_explicit(data: dict[str, Any], lists_only: bool) -> tuple[Conversation, Conversation, Conversation]:
    _require(data, "prompt", "chosen", "rejected")
    if lists_only:
        for f in ("prompt", "chosen", "rejected"):
            if isinstance(data[f], str):
                raise BadRow("bad-messages", f"{f}: trl format wants a message list, got a string "
                                               "(use --format plain)")
    prompt = _messages(data["prompt"], "prompt", "user")
    chosen = _messages(data["chosen"], "chosen", "assistant")
    rejected = _messages(data["rejected"], "rejected", "assistant")
    # Some datasets (e.g. UltraFeedback-binarized) repeat the prompt inside chosen/rejected.
    n = len(prompt)
    if chosen[:n] == prompt and rejected[:n] == prompt and len(chosen) > n and len(rejected) > n:
        chosen, rejected = chosen[n:], rejected[n:]
    if not prompt[-1]["content"].strip():
        raise BadRow("empty-prompt", "prompt: final user turn is empty")
    check_conversation(prompt, where="prompt", ends_with="user", system="anywhere",
                       code="bad-messages")
    if chosen == rejected:
        raise BadRow("identical", "chosen and rejected are identical")
    _check_answer("chosen", chosen, hh=False)
    _check_answer("rejected", rejected, hh=False)
    return prompt, chosen, rejected


def _pair_implicit(data: dict[str, Any]) -> tuple[Conversation, Conversation, Conversation]:
    _require(data, "chosen", "rejected")
    for side in ("chosen", "rejected"):
        if isinstance(data[side], str):
            raise BadRow("bad-messages", f"{side}: trl format wants a message list, got a string "
                                           "(use --format hh for transcripts)")
    chosen = _messages(data["chosen"], "chosen", "assistant")
    rejected = _messages(data["rejected"], "rejected", "assistant")
    prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
    _check_answer("chosen", chosen, hh=False)
    _check_answer("rejected", rejected, hh=False)
    return prompt, chosen, rejected


def _string_list(value: Any) -> list[Any]:
    """A list column; from CSV it arrives as text: a JSON list or comma-separated ids."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return list(limits.loads(value, "principle_ids"))
            except limits.LimitError as e:
                raise BadRow(e.code, str(e)) from None
            except json.JSONDecodeError:
                raise BadRow("bad-field", f"principle_ids: not a JSON list: {value!r:.40}") from None
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise BadRow("bad-field", f"principle_ids: expected a list, got {type(value).__name__}")


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def row_to_record(
    data: dict[str, Any], fmt: str, location: str, *, source: str = "human"
) -> tuple[PreferenceRecord, str]:
    """One parsed row -> (record, the format it was read as). Raises `BadRow`."""
    kind = detect_format(data) if fmt == "auto" else fmt
    if kind == "hh":
        prompt, chosen, rejected = _pair_hh(data)
        known = {"chosen", "rejected"}
    elif kind == "plain":
        prompt, chosen, rejected = _pair_explicit(data, lists_only=False)
        known = _KNOWN
    elif kind == "trl":
        if data.get("prompt") is not None:
            prompt, chosen, rejected = _pair_explicit(data, lists_only=True)
        else:
            prompt, chosen, rejected = _pair_implicit(data)
        known = _KNOWN
    else:
        raise ValueError(f"unknown import format {fmt!r}; choose from {', '.join(FORMATS)}")

    p = _p_chosen(data) if kind != "hh" else 1.0
    meta = data.get("metadata") if kind != "hh" else None
    if isinstance(meta, str):
        try:
            meta = limits.loads(meta, "metadata") if meta else {}
        except limits.LimitError as e:
            raise BadRow(e.code, str(e)) from None
        except json.JSONDecodeError:
            meta = {"text": meta}
    # Non-dict metadata is kept under a key rather than dropped.
    metadata: dict[str, Any] = (_json_safe(meta) if isinstance(meta, dict)
                                else {} if meta in (None, "") else {"source_metadata": _json_safe(meta)})
    extra = {k: v for k, v in data.items() if k not in known and v is not None}
    if extra:
        metadata["extra"] = _json_safe(extra)
    rid = stable_id(prompt, chosen, rejected)
    if kind != "hh" and data.get("id") not in (None, "", rid):
        metadata["source_id"] = _json_safe(data["id"])
    metadata["import"] = {"format": kind, "location": location}
    principle_ids = _string_list(data.get("principle_ids")) if kind != "hh" else []
    try:
        record = PreferenceRecord(
            id=rid,
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            p_chosen=p,
            source=(data.get("source") or source) if kind != "hh" else source,
            principle_ids=principle_ids,
            labeler=data.get("labeler") if kind != "hh" else None,
            metadata=metadata,
        )
    except ValidationError as e:
        raise BadRow("invalid-record", validation_errors(e)[0]) from None
    return record, kind


def import_rows(
    rows: Iterable[Row], fmt: str = "auto", *, source: str = "human"
) -> Iterator[PreferenceRecord | Reject]:
    """Records and rejects, in input order. Exact duplicates (same prompt, chosen and
    rejected) after the first are rejects, so ids stay unique within an import."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; choose from {', '.join(FORMATS)}")
    seen: dict[str, tuple[str, float]] = {}
    for row in rows:
        if row.error:
            yield Reject(location=row.location, code=row.code or "unreadable", reason=row.error,
                         raw=row.raw)
            continue
        data = row.data or {}
        try:
            record, _ = row_to_record(data, fmt, row.location, source=source)
        except BadRow as e:
            yield Reject(location=row.location, code=e.code, reason=e.reason, row=_json_safe(data))
            continue
        first = seen.get(record.id)
        if first is not None:
            note = "" if first[1] == record.p_chosen else f" (there p_chosen={first[1]}, here {record.p_chosen})"
            yield Reject(location=row.location, code="duplicate",
                         reason=f"duplicate of {first[0]}{note}", row=_json_safe(data))
            continue
        seen[record.id] = (row.location, record.p_chosen)
        yield record


def import_file(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "auto",
    rejects_path: str | os.PathLike | None = None,
    shard_size: int = 1000,
    source: str = "human",
) -> ImportReport:
    """Import `src` into a preference store at `out_dir`; rejects go to `rejects_path`
    (default `out_dir/rejects.jsonl`, always written, empty when nothing was rejected)."""
    from cai.data.store import write_preferences

    out = Path(out_dir)
    rejects_file = Path(rejects_path) if rejects_path else out / "rejects.jsonl"
    report = ImportReport(source=str(src), format=fmt, out_dir=str(out), rejects_path=str(rejects_file))
    records: list[PreferenceRecord] = []
    rejects: list[Reject] = []
    formats: Counter[str] = Counter()
    for item in import_rows(iter_rows(src), fmt, source=source):
        if isinstance(item, Reject):
            rejects.append(item)
        else:
            records.append(item)
            formats[item.metadata["import"]["format"]] += 1
    report.rows = len(records) + len(rejects)
    report.imported = len(records)
    report.rejected = len(rejects)
    report.formats = dict(sorted(formats.items()))
    report.reasons = dict(sorted(Counter(r.code for r in rejects).items()))
    write_rejects(rejects, rejects_file)
    write_preferences(records, out, shard_size=shard_size,
                      extra={"import": report.model_dump(exclude={"out_dir"})})
    return report


__all__ = [
    "FORMATS", "ImportReport", "detect_format", "import_file", "import_rows",
    "parse_transcript", "row_to_record", "split_shared_prefix", "to_transcript",
]
