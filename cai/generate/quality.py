"""Is a generated text usable? Small models fail in a few recognisable ways; name them.

    empty       nothing left after cleaning
    truncated   the engine stopped at max_tokens (the text is cut off mid-thought)
    repetition  the text loops: a phrase repeated back to back, or mostly repeated n-grams
    identical   a revision that is the text it was asked to revise (whitespace-insensitive)
    copied      most of it comes from a few-shot example (small models echo the worked
                examples instead of revising; see `copied_share`)
    echo        a revision that mostly repeats its own critique: a small model continues
                the latest assistant turn ("The response does not ...") instead of writing
                a new answer to the user (same two-way 3-gram measure as `copied`)

The check that needs the model (`unresponsive`: a revision that no longer answers its
prompt, by PMI) lives in `relevance`; `meta_commentary` here is its word-pattern half.

`problem(...)` returns the first that applies, as a `Problem` (kind, reason), or None when
the text is ok.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

KINDS = ("empty", "truncated", "repetition", "identical", "copied", "echo")

_WORD = re.compile(r"\w+|[^\w\s]")


class Problem(NamedTuple):
    kind: str  # one of KINDS
    reason: str  # for a person


def fold(text: str) -> str:
    """Whitespace-squashed and case-folded: for comparisons that ignore both."""
    return " ".join(text.split()).casefold()


def _tail_loop(text: str, min_repeats: int = 3, max_unit: int = 200) -> str | None:
    """The unit when the text ends in `min_repeats`+ back-to-back copies of one phrase
    (at least 3 words, or 8+ copies of something shorter): the signature of a looping model."""
    t = " ".join(text.split())
    n = len(t)
    for size in range(1, min(max_unit, n // min_repeats) + 1):
        unit = t[n - size:]
        copies = 1
        while t.endswith(unit * (copies + 1)):
            copies += 1
        words = len(unit.split())
        if copies >= (min_repeats if words >= 3 else 8) and unit.strip():
            return unit.strip()
    return None


def _repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of word n-grams that are copies of an earlier one (0 for short texts)."""
    words = _WORD.findall(text.casefold())
    if len(words) < 40:
        return 0.0
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return (total - len(grams)) / total


def repetition(text: str, max_share: float = 0.5) -> str | None:
    """Why `text` looks like a loop, or None."""
    unit = _tail_loop(text)
    if unit is not None:
        shown = unit if len(unit) <= 40 else unit[:37] + "..."
        return f"ends repeating {shown!r}"
    share = _repeated_ngram_share(text)
    if share > max_share:
        return f"{share:.0%} of its 4-grams are repeats"
    lines = [fold(x) for x in re.split(r"(?<=[.!?])\s+|\n+", text) if len(x.split()) >= 4]
    if lines:
        line, count = Counter(lines).most_common(1)[0]
        if count >= 3:
            return f"the sentence {line[:40]!r} occurs {count} times"
    return None


def _trigrams(text: str) -> list[tuple[str, ...]]:
    words = _WORD.findall(text.casefold())
    return [tuple(words[i:i + 3]) for i in range(len(words) - 2)]


def copied_share(text: str, examples: list[str]) -> float:
    """How much `text` and one example overlap, both ways: min(share of the text's word
    3-grams found in the example, share of the example's found in the text), the largest
    over the examples. Both must be high: a short "I won't help with that." shares half its
    3-grams with "I won't help harm the dog, but ..." yet covers little of it.
    Paraphrased echoes ("Most red wines are only about 12-20% ...") score 0.28-0.8; own
    answers in the examples' style stay under 0.2."""
    grams = _trigrams(text)
    if len(grams) < 3 or not examples:
        return 0.0
    best = 0.0
    for example in examples:
        ex = set(_trigrams(example))
        if ex:
            of_text = sum(g in ex for g in grams) / len(grams)
            of_example = len(set(grams) & ex) / len(ex)
            best = max(best, min(of_text, of_example))
    return best


COPY_SHARE = 0.25

# A revision that talks *about* an answer ("The response does not ...", "the original code
# was designed to ...", "my previous response") instead of being one. "the user" in the
# third person is the same slip: an answer speaks to the user as "you".
_META = re.compile(
    r"""\b(?:the|this|that|my|your|its)\s+(?:(?:original|initial|previous|last|above|revised|
        rewritten|new|updated|first|assistant'?s?)\s+)?(?:response|reply|critique|revision)s?\b(?!\s+(?:time|times|rate|team|plan)\b)
      | \bthe\s+original\s+(?:code|text|answer|question|request|message|version)\b
      | \bthe\s+(?:user|assistant)\b(?!\s+(?:interface|experience|manual|guide|name|account|agreement))
      | \b(?:rewrite|revise)d?\s+(?:the|my|your)\s+(?:response|answer)\b""",
    re.IGNORECASE | re.VERBOSE,
)


def meta_commentary(text: str) -> str | None:
    """The phrase that shows `text` comments on an answer rather than giving one, or None."""
    m = _META.search(text)
    return " ".join(m.group(0).split()) if m else None


def problem(text: str, *, finish_reason: str = "stop", original: str | None = None,
            max_tokens: int | None = None, examples: list[str] = (),
            critique: str | None = None) -> Problem | None:
    """The first problem with a generated text, else None.
    `original`: for a revision, the response it revises. `examples`: few-shot texts it
    must not echo. `critique`: for a revision, the critique it must answer, not repeat."""
    if not text.strip():
        return Problem("empty", "empty after cleaning")
    if finish_reason == "length":
        limit = f" ({max_tokens} tokens)" if max_tokens else ""
        return Problem("truncated", f"cut off at max_tokens{limit}")
    loop = repetition(text)
    if loop:
        return Problem("repetition", loop)
    if original is not None and fold(text) == fold(original):
        return Problem("identical", "same text as the response it revises")
    share = copied_share(text, list(examples))
    if share >= COPY_SHARE:
        return Problem("copied", f"{share:.0%} of its word 3-grams come from a few-shot example")
    if critique is not None:
        share = copied_share(text, [critique])
        if share >= COPY_SHARE:
            return Problem("echo", f"{share:.0%} of its word 3-grams repeat the critique")
    return None
