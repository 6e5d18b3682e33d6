"""Does a revision still answer its prompt? Pointwise mutual information, from the same
model's log-probs.

    pmi = (log P(revision | its prompt) - log P(revision | another prompt)) / tokens

both scored as the assistant's reply (the chat template's generation prompt, then the
revision). An answer to the question is much likelier after that question than after an
unrelated one; a text that has drifted to a generic refusal about crime, or to remarks on
"the response", is about as likely after any prompt, so its PMI is near zero or below.
The other prompt is the next distinct prompt of the same chunk (a fixed, deterministic
derangement), or a neutral one when the chunk has a single prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

from cai.backends import Backend
from cai.backends.text import encode
from cai.schema import prompt_key

NEUTRAL_PROMPT = [{"role": "user", "content": "Tell me something interesting."}]


def distinct_prompts(conversations: Sequence[Sequence[dict[str, str]]]) -> list[list[dict[str, str]]]:
    """The distinct conversations, in first-seen order."""
    seen: dict[str, list[dict[str, str]]] = {}
    for conv in conversations:
        seen.setdefault(prompt_key(list(conv)), [dict(m) for m in conv])
    return list(seen.values())


def shuffled(prompts: list[list[dict[str, str]]], own: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The prompt after `own` in `prompts` (cyclically): never `own` itself."""
    keys = [prompt_key(p) for p in prompts]
    key = prompt_key(list(own))
    if len(prompts) < 2 or key not in keys:
        return NEUTRAL_PROMPT
    return prompts[(keys.index(key) + 1) % len(prompts)]


def _tokens(backend: Backend, text: str) -> int:
    tokenizer = getattr(backend, "tokenizer", None)
    return max(1, len(encode(tokenizer, text)) if tokenizer is not None else len(text.split()))


def pmi(backend: Backend, items: list[tuple[Sequence[Any], Sequence[Any], str]]) -> list[float]:
    """Mean per-token PMI of each (prompt, other prompt, revision); one scoring call."""
    if not items:
        return []
    prefixes, conts = [], []
    for own, other, text in items:
        for conv in (own, other):
            prefixes.append(backend.render_chat([dict(m) for m in conv]))
            conts.append(text)
    lps = backend.continuation_logprobs(prefixes, conts)
    return [(lps[2 * i] - lps[2 * i + 1]) / _tokens(backend, text)
            for i, (_, _, text) in enumerate(items)]
