"""Does an answer need revising at all? The no-change verdict asked before each critique.

The critique always finds fault (it is asked to), so without this step every good answer
to a benign prompt is rewritten, usually for the worse. The model is asked the round's
critique request about its own answer, in the conversation where it would critique it,
as a two-option question, and the two options are scored as the labeler scores "(A)"/"(B)":

    ... assistant: <answer>
    user: <critique request>
          (A) Yes, the response should be changed.   | order "ba" swaps the two
          (B) No, the response is fine as it is.      | option texts
    assistant: The answer is: ( A | B )

P(no change needed) is the mean over the two orders of the "No" option's share
(`cai.feedback.pair_prob`), which cancels the small model's bias for a letter. At or
above the run's `unchanged_threshold` the answer is kept.
"""

from __future__ import annotations

from typing import Any, Sequence

from cai.backends import Backend
from cai.constitution import Constitution, Principle
from cai.feedback import option_prob, pair_prob
from cai.prompting import ANSWER_PREFIX, COMPARISON_OPTIONS, critique_messages

CHANGE = "Yes, the response should be changed."
KEEP = "No, the response is fine as it is."


def verdict_request(principle: Principle, keep_first: bool) -> str:
    first, second = (KEEP, CHANGE) if keep_first else (CHANGE, KEEP)
    return (f"{principle.critique_request}\n\nDoes the response need to change? Options:\n"
            f"(A) {first}\n(B) {second}\n\n"
            f'Reply with "{ANSWER_PREFIX}{COMPARISON_OPTIONS[0]}" or '
            f'"{ANSWER_PREFIX}{COMPARISON_OPTIONS[1]}".')


def verdict_texts(backend: Backend, c: Constitution, principle: Principle,
                  conversation: Sequence[Any], answer: str) -> list[str]:
    """The two scored prefixes: "change" shown as (A), then "keep" shown as (A)."""
    out = []
    for keep_first in (False, True):
        msgs = critique_messages(c, principle, conversation, answer, few_shot=False)
        msgs[-1] = {"role": "user", "content": verdict_request(principle, keep_first)}
        out.append(backend.render_chat(msgs) + ANSWER_PREFIX)
    return out


def p_no_change(lp_change_first: tuple[float, float], lp_keep_first: tuple[float, float]) -> float:
    """P(the answer needs no change) from each order's ((A), (B)) log-probs (pure):
    the mean of "keep"'s share, (B) in the first order and (A) in the second."""
    return pair_prob(option_prob(*lp_keep_first), option_prob(*lp_change_first))


def judge(backend: Backend, c: Constitution,
          items: list[tuple[Principle, Sequence[Any], str]]) -> list[float]:
    """P(no change needed) for each (principle, conversation, answer); one scoring call."""
    if not items:
        return []
    texts = [t for p, conv, ans in items for t in verdict_texts(backend, c, p, conv, ans)]
    lps = backend.continuation_logprobs([t for t in texts for _ in COMPARISON_OPTIONS],
                                        [o for _ in texts for o in COMPARISON_OPTIONS])
    out = []
    for i in range(len(items)):
        a, b, c2, d = lps[4 * i:4 * i + 4]
        out.append(p_no_change((a, b), (c2, d)))
    return out
