"""The constitution format (`schema: 1`) as pydantic models.

`Constitution` is the resolved result (after `extends`); a file on disk may additionally
carry the directives `schema` and `extends`, and a file that extends another may list
partial principles that override the parent's by id (see loader.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator

from cai.constitution.errors import did_you_mean
from cai.schema import BadRow, Message, check_conversation, content_hash

SCHEMA_VERSION = 1
# Directives a file may carry beside the Constitution fields; consumed by the loader.
# (`tests`: the file's own test cases, read by cases.py, not part of the constitution)
FILE_DIRECTIVES = ("schema", "extends", "tests")
# Top-level keys with this prefix are ignored: a place to keep YAML anchors (`x-common: &c`).
EXTENSION_PREFIX = "x-"


def _non_empty(text: str) -> str:
    # Stripped, so `>` and `>-` block scalars (and stray spaces) give the same text and hash.
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _version_text(value: object) -> object:
    # YAML reads `version: 1.10` as the float 1.1; refuse rather than silently change it.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"must be quoted text, e.g. version: \"1.0\" (unquoted, YAML reads "
                         f"this as the number {value!r})")
    return value


Text = Annotated[str, AfterValidator(_non_empty)]
Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64,
                          description="lowercase letters, digits, '-', '_' or '.'")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatMessage(Message):
    """A turn of a worked example: a `cai.schema.Message` whose text must not be blank
    (stripped, like every constitution text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content: Text


def _example_conversation(turns: list[ChatMessage]) -> list[ChatMessage]:
    try:
        check_conversation(turns, ends_with="user", system="never")
    except BadRow as e:
        hint = "; put instructions in system_prompt" if "system turns" in e.reason else ""
        raise ValueError(e.reason + hint) from None
    return turns


ExampleConversation = Annotated[list[ChatMessage], AfterValidator(_example_conversation)]


class Principle(_Strict):
    """One rule: how to critique a response against it, how to revise, and how to compare two."""

    id: Id
    critique_request: Text = Field(description="asked after the response; the model writes a critique")
    revision_request: Text = Field(description="asked after the critique; the model rewrites its response")
    comparison: Text = Field(description="multiple-choice question for AI feedback, e.g. "
                                         "'Which response is less harmful?'")
    judgement: Text | None = Field(None, description="yes/no question for pointwise AI feedback, "
                                   "about the assistant's last reply alone, e.g. 'Is the "
                                   "assistant's last reply free of help with violence?' "
                                   "(default: derived from `comparison`)")
    weight: float = Field(1.0, ge=0.0, description="relative sampling weight; 0 disables the principle")
    tags: list[Annotated[str, AfterValidator(_non_empty)]] = Field(default_factory=list)

    @field_validator("weight", mode="before")
    @classmethod
    def _no_bool(cls, v: object) -> object:
        if isinstance(v, bool):  # pydantic would read `true` as 1.0
            raise ValueError("must be a number, not a boolean")
        return v

    @property
    def judgement_question(self) -> str:
        """The pointwise question: `judgement` when written, else derived from `comparison`."""
        return self.judgement or default_judgement(self.comparison)


# "Which response is more X?" asks for a degree of X, so "Is the assistant's last reply X?"
# asks the same of one reply. Other comparatives ("less harmful", "kinder", "better at")
# have no safe mechanical positive form, so they get the generic wording below.
_MORE_X = re.compile(r"^which (?:of the two |of these )?(?:responses?|answers?|replies|reply)"
                     r"(?: of the assistant)? is more (?P<x>[^?]+?)\s*\??$", re.IGNORECASE)

# "more respectful and less likely to ..." still compares in its second half.
_COMPARATIVE = re.compile(r"\b(?:more|less|than|better|worse|fewer)\b", re.IGNORECASE)


def default_judgement(comparison: str) -> str:
    """A judgement question for a principle that has none, derived from its comparison:
    "Which response is more X?" -> "Is the assistant's last reply X?"; anything else ->
    'Is the assistant's last reply good by this measure: which response is ...?'."""
    text = " ".join(comparison.split())
    m = _MORE_X.match(text)
    if m and not _COMPARATIVE.search(m.group("x")):
        return f"Is the assistant's last reply {m.group('x')}?"
    question = text.rstrip("?. ")
    return f"Is the assistant's last reply good by this measure: {question[:1].lower()}{question[1:]}?"


class FewShotExample(_Strict):
    """A worked critique-and-revision, shown to the model as earlier chat turns."""

    principle: str = Field(description="id of the principle whose requests this example answers")
    conversation: ExampleConversation
    response: Text = Field(description="the assistant's first answer")
    critique: Text
    revision: Text


class FeedbackExample(_Strict):
    """A worked comparison, shown before the question in AI-feedback prompts."""

    principle: str
    conversation: ExampleConversation
    response_a: Text
    response_b: Text
    answer: Literal["A", "B"]


class Defaults(_Strict):
    revision_rounds: int = Field(1, ge=1, le=16, description="critique-revision rounds per record")


class Constitution(_Strict):
    name: Id
    version: Annotated[str, BeforeValidator(_version_text), AfterValidator(_non_empty)]
    description: Text
    system_prompt: Text | None = None
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[FewShotExample] = Field(default_factory=list)
    feedback_few_shot: list[FeedbackExample] = Field(default_factory=list)
    defaults: Defaults = Field(default_factory=Defaults)

    _sources: tuple[str, ...] = PrivateAttr(default=())

    @property
    def sources(self) -> tuple[str, ...]:
        """Files this constitution was resolved from, the file itself first, then its parents."""
        return self._sources

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(f"no principle {principle_id!r} in {self.name}"
                       f"{did_you_mean(principle_id, [p.id for p in self.principles])}")

    def content_hash(self) -> str:
        """Identity of the resolved content: equal for files that differ only in key order,
        whitespace, comments or how they were split across `extends`."""
        data = self.model_dump(mode="json")
        for p in data["principles"]:
            if p["judgement"] is None:  # files written before `judgement` keep their hash
                del p["judgement"]
        return content_hash(data)


PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
# Texts that are sent to the model as written. They take NO placeholders: the conversation
# and response already reach the model as chat turns, so a `{response}` would be sent literally.
TEMPLATE_FIELDS = ("critique_request", "revision_request", "comparison", "judgement")


def json_schema() -> dict:
    """JSON Schema of a constitution *file*, for editor completion and checking."""
    schema = Constitution.model_json_schema()
    schema["title"] = "cai constitution"
    props = schema["properties"]
    props["schema"] = {"const": SCHEMA_VERSION, "description": "format version; always 1"}
    schema["patternProperties"] = {f"^{EXTENSION_PREFIX}": {}}
    props["tests"] = {"type": "array", "items": {"type": "object"},
                      "description": "test cases: behaviour (prompt, expect: decline|answer), "
                                     "critique (principle, prompt, response, expect: "
                                     "flagged|passes), preference (principle, prompt, chosen, "
                                     "rejected)"}
    props["extends"] = {"type": "string", "description": "a path relative to this file, or a "
                        "shipped constitution name (e.g. harmless)"}
    # A file that extends another may omit everything the parent supplies, and list partial
    # principles (just `id` plus the fields it overrides).
    base_required = schema.pop("required", [])
    principle = schema["$defs"]["Principle"]
    principle_required = principle.pop("required", [])
    schema["required"] = ["schema", "name"]
    schema["if"] = {"not": {"required": ["extends"]}}
    schema["then"] = {
        "required": base_required,
        "properties": {"principles": {"items": {"required": principle_required}}},
    }
    principle["required"] = ["id"]
    return schema
