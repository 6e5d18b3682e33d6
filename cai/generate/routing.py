"""Which principles fit a prompt, decided from the prompt itself (`--route auto`).

Each drawable principle that is not for benign prompts is a candidate, named by the words
of its tags ("violence_weapons" -> "violence weapons"). The loaded model scores every name
as the continuation of a question about the prompt ("Name the topic of this request"),
the way the labeler scores "(A)"/"(B)", and once more after an empty prompt. The gain

    score(p) = log P(name_p | prompt) - log P(name_p | empty prompt)     (nats)

is the pointwise mutual information of the name with the prompt: it removes how likely a
name is anyway (short, common words win every raw comparison). The best candidate wins
when its gain reaches `threshold`; below it the prompt matches no harm and is *benign*, and
draws among the principles tagged `benign` (a constitution names them so: for example
helpfulness and no-preaching only). A constitution without such principles draws benign
prompts from all of them, as an unrouted run does.

One `continuation_logprobs` call scores a whole chunk: prompts x candidates, plus one
empty prompt per candidate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from cai.backends import Backend
from cai.constitution import Constitution, Principle

BENIGN_TAG = "benign"
BENIGN = "benign"
ROUTE_QUESTION = "Name the topic of this request in a few words."
ANSWER_PREFIX = "Topic:"
_EMPTY_PROMPT = "Hello."


@dataclass(frozen=True)
class Route:
    """Where one prompt was routed: a principle id (every round uses it) or BENIGN, the tags
    a benign prompt's draws use, and the best candidate's gain (also for a benign prompt)."""

    label: str
    tags: tuple[str, ...]
    score: float


def tag_words(principle: Principle) -> str:
    """The principle's name for scoring: the distinct words of its tags, in order."""
    words: list[str] = []
    for tag in principle.tags:
        for w in re.split(r"[\s_\-]+", tag.strip()):
            if w and w.casefold() not in words:
                words.append(w.casefold())
    return " ".join(words)


def candidates(c: Constitution) -> list[Principle]:
    """Principles a prompt can be routed to: drawable, tagged, and not for benign prompts."""
    return [p for p in c.principles if p.weight > 0 and p.tags and BENIGN_TAG not in p.tags]


def routing_text(backend: Backend, prompt_text: str) -> str:
    """The scored prefix: the question about `prompt_text` as a user turn, the assistant
    turn opened by the chat template, then ANSWER_PREFIX. (Measured against a raw-text
    layout, "Request: ...\nTopic of this request:", on every other train prompt: 40 vs 22
    of 99 red-team prompts under their own category's principle; bench/revision_quality.py.)"""
    return backend.render_chat([{"role": "user",
                                 "content": f"{ROUTE_QUESTION}\n\nRequest: {prompt_text}"}]) \
        + ANSWER_PREFIX


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """What routing reads of a conversation: its last user turn."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def score_prompts(backend: Backend, c: Constitution, texts: list[str]) -> list[dict[str, float]]:
    """Per prompt: {principle id: gain in nats} for every candidate (one scoring call)."""
    cands = candidates(c)
    if not texts or not cands:
        return [{} for _ in texts]
    names = [" " + tag_words(p) for p in cands]
    prefixes = [routing_text(backend, t) for t in [*texts, _EMPTY_PROMPT]]
    lps = backend.continuation_logprobs([p for p in prefixes for _ in names],
                                        [n for _ in prefixes for n in names])
    k = len(names)
    base = lps[len(texts) * k:]
    return [{p.id: lps[i * k + j] - base[j] for j, p in enumerate(cands)}
            for i in range(len(texts))]


def decide(c: Constitution, scores: dict[str, float], threshold: float) -> Route:
    """The route for one prompt's scores (pure)."""
    benign = (BENIGN_TAG,) if any(BENIGN_TAG in p.tags for p in c.principles if p.weight > 0) else ()
    if not scores:
        return Route(BENIGN, benign, float("-inf"))
    best = max(scores, key=lambda pid: (scores[pid], pid))
    if scores[best] < threshold:
        return Route(BENIGN, benign, scores[best])
    return Route(best, (), scores[best])


def route_prompts(backend: Backend, c: Constitution, texts: list[str],
                  threshold: float) -> list[Route]:
    return [decide(c, s, threshold) for s in score_prompts(backend, c, texts)]
