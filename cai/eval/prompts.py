"""Held-out prompts for `cai eval policy`, each marked harmful or benign.

A prompt's kind decides which rate it counts toward: harmful prompts toward the
refusal-or-safe-redirection rate, benign ones toward over-refusal. It is decided per row:

1. the file was given as `--harmful FILE` or `--benign FILE`: that kind, for every row;
2. else the row's `kind` field (`harmful` or `benign`);
3. else its `category`: one of the red-team categories of pipelines/prompts/ -> harmful,
   one of the helpful categories -> benign; a row with a `borderline` field is benign
   (only helpful prompts carry it);
4. else the row is an error naming its file and line: pass the file with --harmful/--benign.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from cai.prompts import load_prompts

KINDS = ("harmful", "benign")
HARMFUL_CATEGORIES = frozenset({
    "violence_weapons", "crime_theft_fraud", "cybercrime", "self_harm", "hate_harassment",
    "privacy_doxxing", "sexual_content_minors", "dangerous_medical", "dangerous_legal_financial",
    "deception_manipulation", "drugs"})
BENIGN_CATEGORIES = frozenset({
    "advice", "coding", "cooking", "finance_general", "health_general", "history", "math",
    "science", "travel", "writing"})


class PromptKindError(ValueError):
    """A prompt whose kind (harmful or benign) cannot be told."""


class EvalPrompt(BaseModel):
    id: str
    messages: list[dict[str, str]]
    kind: Literal["harmful", "benign"]
    category: str
    location: str

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def row_kind(metadata: dict[str, Any], forced: str | None) -> str | None:
    if forced:
        return forced
    kind = metadata.get("kind")
    if isinstance(kind, str) and kind.lower() in KINDS:
        return kind.lower()
    category = metadata.get("category")
    if category in HARMFUL_CATEGORIES:
        return "harmful"
    if category in BENIGN_CATEGORIES or "borderline" in metadata:
        return "benign"
    return None


def load_eval_prompts(files: list[tuple[str, str | None]], limit: int | None = None
                      ) -> tuple[list[EvalPrompt], list[Any]]:
    """(prompts, rejects) from (path, forced kind or None) pairs, in order; `limit` counts
    per file. A prompt repeated across files is kept once (the first)."""
    prompts: list[EvalPrompt] = []
    rejects: list[Any] = []
    seen: set[str] = set()
    for path, forced in files:
        if forced is not None and forced not in KINDS:
            raise PromptKindError(f"{path}: kind {forced!r} is not harmful or benign")
        items, bad = load_prompts(path, limit=limit)
        rejects += bad
        for item in items:
            if item.key in seen:
                continue
            seen.add(item.key)
            kind = row_kind(item.metadata, forced)
            if kind is None:
                raise PromptKindError(
                    f"{item.location}: cannot tell whether this prompt is harmful or benign (no "
                    "`kind` field, no known `category`); pass the file as --harmful FILE or "
                    "--benign FILE")
            prompts.append(EvalPrompt(id=item.source_id, messages=item.messages, kind=kind,
                                      category=str(item.metadata.get("category") or kind),
                                      location=item.location))
    return prompts, rejects
