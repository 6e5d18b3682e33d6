"""The exact chat messages the model sees at each stage of Constitutional AI.

Every builder puts what is shared by all records first (system prompt, then few-shot
turns) and the record's own conversation last, so an engine with a prefix cache (vLLM)
computes the shared part once. Messages are plain dicts {"role", "content"}
(`cai.schema.Conversation`); incoming conversations are checked by
`cai.schema.check_conversation`.

Constitution texts are sent as written (they take no placeholders): the critique and
revision requests are user turns that follow the response in the chat, the
comparison question is placed in a fixed multiple-choice layout built here, and the
judgement question (pointwise feedback) in a fixed yes/no layout about one reply.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from cai.constitution.schema import Constitution, Principle
from cai.schema import Conversation, check_conversation

COMPARISON_OPTIONS = (" (A)", " (B)")
ANSWER_PREFIX = "The answer is:"
# Pointwise feedback scores the first token of the assistant's answer: each verdict in
# both spellings a tokenizer may use there (with and without a leading space).
JUDGEMENT_ANSWERS = {"yes": ("Yes", " Yes"), "no": ("No", " No")}
JUDGEMENT_INSTRUCTION = "Answer Yes or No."
_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _as_messages(conversation: Iterable[Any]) -> Conversation:
    """Dicts or `Message` models -> fresh dicts, checked: known roles, a system turn only
    first, ending with a user turn (a `cai.schema.BadRow`, a ValueError, otherwise)."""
    return check_conversation(conversation, ends_with="user")


def _with_system(c: Constitution, conversation: Iterable[Any]) -> tuple[Conversation, Conversation]:
    """(system turn list, rest). A record's own leading system turn is appended to the
    constitution's system prompt: chat templates accept a system turn only first."""
    turns = _as_messages(conversation)
    own = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    parts = [t for t in (c.system_prompt, own) if t]
    return ([_msg("system", "\n\n".join(parts))] if parts else []), turns


def response_messages(c: Constitution, conversation: Iterable[Any]) -> Conversation:
    """What the assistant answers: system prompt (if any) then the conversation."""
    system, turns = _with_system(c, conversation)
    return system + turns


def few_shot_turns(c: Constitution) -> Conversation:
    """Each critique/revision example as earlier chat turns, using its own principle's requests."""
    turns: Conversation = []
    for ex in c.few_shot:
        p = c.principle(ex.principle)
        turns += [_msg(m.role, m.content) for m in ex.conversation]
        turns += [_msg("assistant", ex.response), _msg("user", p.critique_request),
                  _msg("assistant", ex.critique), _msg("user", p.revision_request),
                  _msg("assistant", ex.revision)]
    return turns


def critique_messages(c: Constitution, principle: Principle, conversation: Iterable[Any],
                      response: str, few_shot: bool = True) -> Conversation:
    """[system, few-shot..., conversation..., assistant: response, user: critique request];
    the model's next turn is the critique."""
    system, turns = _with_system(c, conversation)
    shots = few_shot_turns(c) if few_shot else []
    return system + shots + turns + [_msg("assistant", response),
                                     _msg("user", principle.critique_request)]


def revision_messages(c: Constitution, principle: Principle, conversation: Iterable[Any],
                      response: str, critique: str, few_shot: bool = True) -> Conversation:
    """The critique prompt continued with the critique and the revision request; the
    model's next turn is the revised response."""
    return critique_messages(c, principle, conversation, response, few_shot) + [
        _msg("assistant", critique), _msg("user", principle.revision_request)]


def _transcript(conversation: Iterable[Any]) -> str:
    return "\n\n".join(f"{_ROLE_NAMES[m['role']]}: {m['content'].strip()}"
                       for m in _as_messages(conversation))


def comparison_prompt(question: str, conversation: Iterable[Any], response_a: str,
                      response_b: str) -> str:
    """The multiple-choice text of one comparison (a single user turn)."""
    return (
        "Here is a conversation between a user and an AI assistant.\n\n"
        f"{_transcript(conversation)}\n\n"
        f"{question.strip()}\n"
        "Options:\n"
        f"(A) {response_a.strip()}\n"
        f"(B) {response_b.strip()}\n\n"
        f'Reply with "{ANSWER_PREFIX}{COMPARISON_OPTIONS[0]}" or "{ANSWER_PREFIX}{COMPARISON_OPTIONS[1]}".'
    )


def comparison_messages(c: Constitution, principle: Principle, conversation: Iterable[Any],
                        response_a: str, response_b: str, few_shot: bool = True) -> Conversation:
    """[feedback few-shot (user question, assistant answer)..., user: this comparison].

    No system prompt: the labeler judges the assistant, it does not play it. The labeler
    renders this with the generation prompt, appends ANSWER_PREFIX, and scores
    COMPARISON_OPTIONS as continuations.
    """
    turns: Conversation = []
    if few_shot:
        for ex in c.feedback_few_shot:
            q = c.principle(ex.principle).comparison
            turns += [
                _msg("user", comparison_prompt(q, ex.conversation, ex.response_a, ex.response_b)),
                _msg("assistant", ANSWER_PREFIX + COMPARISON_OPTIONS["AB".index(ex.answer)]),
            ]
    return turns + [_msg("user", comparison_prompt(principle.comparison, conversation,
                                                   response_a, response_b))]


def judgement_prompt(question: str, conversation: Iterable[Any], response: str) -> str:
    """The yes/no text of one pointwise judgement (a single user turn): the conversation
    with the reply to judge as its last assistant turn, then the question."""
    return (
        "Here is a conversation between a user and an AI assistant.\n\n"
        f"{_transcript(conversation)}\n\n"
        f"Assistant: {response.strip()}\n\n"
        f"{question.strip()} {JUDGEMENT_INSTRUCTION}"
    )


def judgement_messages(c: Constitution, principle: Principle, conversation: Iterable[Any],
                       response: str, few_shot: bool = True) -> list[Message]:
    """[feedback few-shot as judgements..., user: this judgement].

    Each `feedback_few_shot` comparison becomes two worked judgements under its
    principle's judgement question: the preferred response answered "Yes", the other
    "No". No system prompt, as for comparisons. The labeler renders this with the
    generation prompt and scores JUDGEMENT_ANSWERS as the first token of the answer.
    """
    turns: list[Message] = []
    if few_shot:
        for ex in c.feedback_few_shot:
            q = c.principle(ex.principle).judgement_question
            good, bad = ((ex.response_a, ex.response_b) if ex.answer == "A"
                         else (ex.response_b, ex.response_a))
            for reply, verdict in ((good, "Yes"), (bad, "No")):
                turns += [_msg("user", judgement_prompt(q, ex.conversation, reply)),
                          _msg("assistant", verdict)]
    return turns + [_msg("user", judgement_prompt(principle.judgement_question, conversation,
                                                  response))]


_PREAMBLE = re.compile(
    r"""^\s*(?:
        (?:\*\*|__)?(?:revised\s+response|revision|rewrite|rewritten\s+response|critique|response|answer)
          (?:\s*\d+)?\s*(?:\*\*|__)?\s*:(?:\*\*|__)?
      | here(?:'s|\s+is)\s+(?:a|an|the|my)\s+(?:revised|rewritten|improved|updated|better)\s+
          (?:response|version|answer|reply)[^:\n]{0,40}:
    )""",
    re.IGNORECASE | re.VERBOSE,
)


def clean_output(text: str) -> str:
    """A generated critique or revision without "Revision:"-style labels or outer whitespace."""
    text = text.strip()
    while True:
        m = _PREAMBLE.match(text)
        if not m or not text[m.end():].strip():
            return text
        text = text[m.end():].strip()
