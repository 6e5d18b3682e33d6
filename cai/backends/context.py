"""Does a request fit the model's context? One answer for every stage.

An engine fails a whole batch on one request longer than its context, so generation,
labeling and sampling set such requests aside first, and `cai constitution render` says
whether its prompts fit. A request needs its prompt's tokens (chat template included,
`count_tokens`), any raw text appended after the rendered prompt (`suffix`: the labeler's
answer prefix and option, tokenized on their own as they are scored), and the tokens
reserved for the answer (`reserve`: max_tokens, or a reasoning budget).

When the context or the tokenizer is unknown (an OpenAI-compatible server without
`tokenizer=`), every request counts as fitting and the server has the last word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from cai.backends.text import encode, render_chat
from cai.schema import Conversation


class TokenCounter(Protocol):
    """What the check needs: every `Backend` is one, and so is a bare `ChatTokenizer`."""

    tokenizer: Any

    def count_tokens(self, conversation: Conversation) -> int | None: ...

    def context_length(self) -> int | None: ...


class ChatTokenizer:
    """A tokenizer (and the model's context length, when known) without an engine: for
    checks made before, or instead of, loading one."""

    def __init__(self, tokenizer: Any, context: int | None = None) -> None:
        self.tokenizer = tokenizer
        self._context = context

    def context_length(self) -> int | None:
        return self._context

    def count_tokens(self, conversation: Conversation) -> int:
        return len(encode(self.tokenizer, render_chat(self.tokenizer, conversation)))


@dataclass(frozen=True)
class ContextFit:
    tokens: int | None  # prompt + suffix tokens; None when they cannot be counted
    reserve: int  # tokens kept free for the answer
    limit: int | None  # the model's context; None when unknown

    @property
    def ok(self) -> bool:
        return self.tokens is None or self.limit is None or self.tokens + self.reserve <= self.limit


def context_fit(counter: TokenCounter, conversation: Conversation, *, reserve: int = 0,
                suffix: str | Sequence[str] = "") -> ContextFit:
    """Whether `conversation` (+ `suffix`), with `reserve` tokens left to answer, fits.
    Several suffixes (the options a prompt is scored with): the longest counts."""
    limit = counter.context_length()
    if limit is None or counter.tokenizer is None:
        return ContextFit(None, reserve, limit)
    n = counter.count_tokens(conversation)
    suffixes = [suffix] if isinstance(suffix, str) else list(suffix)
    if n is not None and any(suffixes):
        n += max(len(encode(counter.tokenizer, s)) for s in suffixes)
    return ContextFit(n, reserve, limit)


def prompt_budget(counter: TokenCounter, reserve: int) -> int | None:
    """The most prompt tokens that leave `reserve` to answer (at least 1); None when the
    context or the tokenizer is unknown."""
    limit = counter.context_length()
    if limit is None or counter.tokenizer is None:
        return None
    return max(1, limit - reserve)
