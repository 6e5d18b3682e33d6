"""The arithmetic of AI feedback, as small pure functions over floats.

One comparison shows a pair (x, y) under one principle in two orders:
  order "ab": x is option (A), y is option (B)
  order "ba": y is option (A), x is option (B)
In each, p(A) is the softmax over the two option log-probs (the model's choice restricted
to the two answers). Averaging p_ab(A) with p_ba(B) = 1 - p_ba(A) cancels the model's bias
for a position (small models favour "(A)" heavily). K principles are ensembled by the mean
of their probabilities, as in the CAI paper and RLAIF.

Chain-of-thought answers are over-confident (after reasoning the model nearly always puts
all its mass on one letter), so the CAI paper clamps them to [0.4, 0.6]; we clamp each
per-order p(A) before averaging, so every probability that reaches a record is in range.
"""

from __future__ import annotations

import math
from typing import Sequence

COT_CLAMP = (0.4, 0.6)


def option_prob(logp_a: float, logp_b: float) -> float:
    """p(A) = exp(la) / (exp(la) + exp(lb)), computed as a logistic of the difference
    (exact for any magnitude: no overflow for very negative log-probs)."""
    d = logp_a - logp_b
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


def clamp(p: float, lo: float = COT_CLAMP[0], hi: float = COT_CLAMP[1]) -> float:
    if lo > hi:
        raise ValueError("clamp: lo > hi")
    return min(hi, max(lo, p))


def pair_prob(p_ab_a: float, p_ba_a: float) -> float:
    """P(x > y) from both orders: mean of x's probability in each, p_ab(A) and p_ba(B)."""
    return 0.5 * (p_ab_a + (1.0 - p_ba_a))


def ensemble(probs: Sequence[float]) -> float:
    """Mean over principles (an equal-weight mixture of the K judges)."""
    if not probs:
        raise ValueError("ensemble of no probabilities")
    return math.fsum(probs) / len(probs)


def consistent(p_ab_a: float, p_ba_a: float) -> bool:
    """The same response wins in both orders: x wins "ab" (p(A) > .5) and "ba" (p(A) < .5),
    or y wins both. An exact 0.5 in either order names no winner, so it is not consistent."""
    return (p_ab_a > 0.5 and p_ba_a < 0.5) or (p_ab_a < 0.5 and p_ba_a > 0.5)


def entropy_bits(p: float) -> float:
    """Binary entropy H(p) in bits: 1 for a coin flip, 0 for a certain label."""
    return -math.fsum(q * math.log2(q) for q in (p, 1.0 - p) if q > 0.0)
