"""What `cai label` reads: pairs to compare, from any of three row kinds, mixed freely.

1. Preference records (a store directory, .parquet, or JSONL of `PreferenceRecord` rows),
   e.g. generation's `ai-revision` pairs: (first, second) = (chosen, rejected).
2. Human rows that `cai data import` understands (plain prompt/chosen/rejected strings,
   HH transcripts, TRL message lists), read through the same importer: (chosen, rejected).
3. Candidate rows from `cai sample`: a prompt and >= 2 responses; every unordered pair
   i < j becomes (responses[i], responses[j]).

A row or pair that cannot be labeled (unreadable, not a pair, identical or empty answers, a
multi-turn completion, the same pair twice) becomes a `cai.schema.Reject` with its reason;
the run goes on.
"""

from __future__ import annotations

import json
import os
from itertools import combinations
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cai.data.importers import row_to_record
from cai.io import iter_rows
from cai.limits import LimitError
from cai.records import PreferenceRecord
from cai.schema import BadRow, Message, Reject, prompt_key, stable_id, validation_errors


class Candidates(BaseModel):
    """One row of a candidates file (`cai sample` output): a prompt and its responses."""

    model_config = ConfigDict(extra="allow")

    id: str
    prompt: list[Message] = Field(min_length=1)
    responses: list[str] = Field(min_length=2)

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_is_one_user_turn(cls, v: Any) -> Any:
        return [{"role": "user", "content": v}] if isinstance(v, str) else v


class Pair(BaseModel):
    """Two responses to one prompt, in input order. `key` ignores that order (and
    whitespace), so a pair and its swap share principles, and human labels match."""

    model_config = ConfigDict(extra="forbid")

    key: str
    prompt: list[dict[str, str]]
    first: str
    second: str
    # Provenance: id, source, p_chosen (P(first > second) per the input's own label, if any),
    # labeler, location, metadata of the input row.
    input: dict[str, Any] = Field(default_factory=dict)


def normalize(text: str) -> str:
    return " ".join(text.split())


def pair_key(prompt: list[dict[str, str]], a: str, b: str) -> str:
    return stable_id(prompt_key(prompt), sorted([normalize(a), normalize(b)]))


def _answer(turns: list[Message], side: str) -> str:
    if len(turns) != 1:
        raise BadRow("multi-turn", f"{side}: {len(turns)} turns; only a single assistant "
                                     "answer can be compared")
    return turns[0].content


def _check(a: str, b: str) -> None:
    if not a.strip() or not b.strip():
        raise BadRow("empty-answer", "an answer is empty")
    if normalize(a) == normalize(b):
        raise BadRow("identical", "the two answers are identical")


def _from_record(rec: PreferenceRecord, location: str) -> Pair:
    first, second = _answer(rec.chosen, "chosen"), _answer(rec.rejected, "rejected")
    _check(first, second)
    prompt = [m.model_dump() for m in rec.prompt]
    return Pair(key=pair_key(prompt, first, second), prompt=prompt, first=first, second=second,
                input={"id": rec.id, "source": rec.source, "p_chosen": rec.p_chosen,
                       "labeler": rec.labeler, "principle_ids": rec.principle_ids,
                       "location": location, "metadata": rec.metadata})


def _from_candidates(c: Candidates, location: str) -> list[Pair | Reject]:
    prompt = [m.model_dump() for m in c.prompt]
    out: list[Pair | Reject] = []
    for i, j in combinations(range(len(c.responses)), 2):
        a, b = c.responses[i], c.responses[j]
        try:
            _check(a, b)
        except BadRow as e:
            out.append(Reject(location=f"{location}[{i},{j}]", code=e.code, reason=e.reason))
            continue
        meta = {k: v for k, v in (c.model_extra or {}).items()}
        out.append(Pair(key=pair_key(prompt, a, b), prompt=prompt, first=a, second=b,
                        input={"id": c.id, "source": "candidates", "indices": [i, j],
                               "location": location, "metadata": meta}))
    return out


def _row_items(data: dict[str, Any], location: str) -> list[Pair | Reject]:
    if "responses" in data:
        return _from_candidates(Candidates.model_validate(data), location)
    try:
        rec = PreferenceRecord.from_row(data)
    except (ValidationError, json.JSONDecodeError, TypeError, LimitError):
        rec, _ = row_to_record(data, "auto", location)  # human formats; raises BadRow
    return [_from_record(rec, location)]


def read_pairs(path: str | os.PathLike) -> tuple[list[Pair], list[Reject]]:
    """All labelable pairs in `path` (input order) and the rejects, with reasons."""
    pairs: list[Pair] = []
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    for row in iter_rows(path):
        if row.error:
            rejects.append(Reject(location=row.location, code=row.code or "unreadable",
                                  reason=row.error, raw=row.raw))
            continue
        data = row.data or {}
        try:
            items = _row_items(data, row.location)
        except BadRow as e:
            rejects.append(Reject(location=row.location, code=e.code, reason=e.reason, row=_safe(data)))
            continue
        except ValidationError as e:
            rejects.append(Reject(location=row.location, code="invalid-candidates",
                                  reason=validation_errors(e)[0], row=_safe(data)))
            continue
        for item in items:
            if isinstance(item, Reject):
                rejects.append(item)
            elif item.key in seen:
                rejects.append(Reject(location=item.input["location"], code="duplicate",
                                      reason=f"same pair as {seen[item.key]}", row=_safe(data)))
            else:
                seen[item.key] = item.input["location"]
                pairs.append(item)
    return pairs, rejects


def human_preferences(pairs: list[Pair]) -> dict[str, str]:
    """pair key -> the preferred answer's normalised text, from pairs whose input carries a
    label (p_chosen != 0.5). For `--eval-against`."""
    out: dict[str, str] = {}
    for p in pairs:
        pc = p.input.get("p_chosen")
        if pc is None or pc == 0.5:
            continue
        out[p.key] = normalize(p.first if pc > 0.5 else p.second)
    return out


def _safe(data: Any) -> Any:
    return json.loads(json.dumps(data, ensure_ascii=False, default=str))
