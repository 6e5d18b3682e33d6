"""Small statistics for evaluation reports, as pure functions over floats (no numpy needed)."""

from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes/n (0.95 by default). n = 0 gives
    (0, 1): no data, no information. Fractional successes (ties counted half) are allowed."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(successes: float, n: int) -> dict:
    """{"rate", "k", "n", "ci95": [lo, hi]} with rate None when n = 0."""
    lo, hi = wilson(successes, n)
    return {"rate": successes / n if n else None, "k": successes, "n": n, "ci95": [lo, hi]}


def paired_difference(after: Sequence[float], before: Sequence[float], z: float = Z95) -> dict:
    """Mean of after[i] - before[i] over paired items (the same prompts, scored twice), with
    a normal-approximation 95% interval mean ± z·sd/√n (sd with n - 1). Pairing removes the
    between-prompt spread, which dominates when the same prompts are scored before and after.
    {"n", "mean", "sd", "ci95": [lo, hi]}; with n < 2 sd and ci95 are None."""
    if len(after) != len(before):
        raise ValueError(f"paired_difference: {len(after)} values after, {len(before)} before")
    n = len(after)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    d = [a - b for a, b in zip(after, before)]
    mean = math.fsum(d) / n
    sd = sample_sd(d)
    if sd is None:
        return {"n": n, "mean": mean, "sd": None, "ci95": None}
    half = z * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def sample_sd(xs: Sequence[float]) -> float | None:
    """Standard deviation with n - 1 in the denominator; None for fewer than 2 values."""
    n = len(xs)
    if n < 2:
        return None
    mean = math.fsum(xs) / n
    return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), q in [0, 1]."""
    if not xs:
        raise ValueError("quantile of no values")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def describe(xs: Sequence[float]) -> dict:
    """n, mean, median, p90, min, max of a sample (None values when it is empty)."""
    if not xs:
        return {"n": 0, "mean": None, "median": None, "p90": None, "min": None, "max": None}
    return {"n": len(xs), "mean": math.fsum(xs) / len(xs), "median": quantile(xs, 0.5),
            "p90": quantile(xs, 0.9), "min": min(xs), "max": max(xs)}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when fewer than 2 points or a variable is constant."""
    if len(xs) != len(ys):
        raise ValueError("pearson: samples differ in length")
    n = len(xs)
    if n < 2:
        return None
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation: Pearson of the (tie-averaged) ranks."""
    if len(xs) != len(ys):
        raise ValueError("spearman: samples differ in length")
    return pearson(ranks(xs), ranks(ys))


def win_rate(outcomes: Sequence[float]) -> dict:
    """Outcomes 1 (win), 0.5 (tie), 0 (loss) -> proportion() of wins with ties counted half,
    plus the counts."""
    n = len(outcomes)
    wins = sum(1 for o in outcomes if o == 1)
    ties = sum(1 for o in outcomes if o == 0.5)
    out = proportion(wins + 0.5 * ties, n)
    out.update(wins=wins, ties=ties, losses=n - wins - ties)
    return out
