"""The preference record: one schema for AI-labeled and human-labeled pairs.

Every stage that consumes preference data (reward model, PPO, evaluation) reads
`PreferenceRecord`s, whatever produced them. Prompt, chosen and rejected are message
lists, as in TRL's conversational preference format, so multi-turn prompts and
export to TRL need no conversion.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Re-exported: records are where most code meets them.
from cai.schema import ROLES, Message, arrow_messages, check_conversation, prompt_key, stable_id

if TYPE_CHECKING:
    import pyarrow as pa

Source = Literal["human", "ai-revision", "ai-feedback"]


class PreferenceRecord(BaseModel):
    """A prompt with two candidate completions and the probability that `chosen` is better."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: list[Message] = Field(min_length=1)
    chosen: list[Message] = Field(min_length=1)
    rejected: list[Message] = Field(min_length=1)
    p_chosen: float = Field(1.0, ge=0.0, le=1.0, description="1.0 for a hard label")
    source: Source
    principle_ids: list[str] = Field(default_factory=list)
    labeler: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("chosen", "rejected")
    @classmethod
    def _ends_with_assistant(cls, turns: list[Message]) -> list[Message]:
        check_conversation(turns, ends_with="assistant", system="anywhere")
        if not turns[-1].content.strip():
            raise ValueError("final assistant turn is empty")
        return turns

    @model_validator(mode="after")
    def _prompt_ends_with_user(self) -> "PreferenceRecord":
        check_conversation(self.prompt, where="prompt", ends_with="user", system="anywhere")
        return self

    def to_row(self) -> dict[str, Any]:
        """A plain dict matching `ARROW_SCHEMA` (metadata as JSON text so the schema is fixed)."""
        row = self.model_dump()
        row["metadata"] = json.dumps(self.metadata, sort_keys=True, ensure_ascii=False)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "PreferenceRecord":
        row = dict(row)
        meta = row.get("metadata")
        if isinstance(meta, str):
            from cai.limits import loads  # the text may come from any input file

            row["metadata"] = loads(meta, "metadata") if meta else {}
        return cls.model_validate(row)


def arrow_schema() -> "pa.Schema":
    """The Arrow schema of a preference store (`to_row` dicts)."""
    import pyarrow as pa

    messages = arrow_messages()
    return pa.schema([
        ("id", pa.string()),
        ("prompt", messages),
        ("chosen", messages),
        ("rejected", messages),
        ("p_chosen", pa.float64()),
        ("source", pa.string()),
        ("principle_ids", pa.list_(pa.string())),
        ("labeler", pa.string()),
        ("metadata", pa.string()),
    ])


def __getattr__(name: str):
    # ARROW_SCHEMA on first use, so importing records (and the CLI) does not load pyarrow
    if name == "ARROW_SCHEMA":
        globals()[name] = value = arrow_schema()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARROW_SCHEMA", "ROLES", "Message", "PreferenceRecord", "Source", "arrow_schema",
           "prompt_key", "stable_id"]
