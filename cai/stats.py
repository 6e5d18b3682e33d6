"""The statistics every stage reports with, as pure functions over floats (no numpy needed):
means, percentages, Wilson intervals, paired differences, correlations, and the reward
model's pair metrics (accuracy, margin, calibration). Train, label and eval all import them
from here, so each number is computed one way.

ECE here is the calibration of the model's pairwise confidence. For each pair with a
preferred side (p != 0.5) the model predicts the side with the higher reward, with
confidence σ(|Δ|) in [0.5, 1]; the chance that prediction is right is p (or 1 - p when it
predicts rejected), which is 1 or 0 for hard labels. Pairs are put in 10 equal-width
confidence bins over [0.5, 1]; ECE = Σ_b (n_b / n) · |mean confidence_b − mean correctness_b|.
0 is perfect calibration; a model that is always sure and right half the time scores ~0.5.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

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


def mean(xs: Sequence[float]) -> float | None:
    """The arithmetic mean (math.fsum); None for no values."""
    return math.fsum(xs) / len(xs) if xs else None


def hit(x: float, y: float) -> float:
    """1 if x > y, 0.5 on a tie, else 0: one comparison's share of a win."""
    return 1.0 if x > y else 0.5 if x == y else 0.0


def pct(p: float | dict | None, missing: str = "-") -> str:
    """A share as "12.5%"; a proportion() dict as "12.5% [5-28] n=44" (its 95% interval and
    count when it carries them); `missing` for None or a proportion of nothing."""
    if isinstance(p, dict):
        if p.get("rate") is None:
            return missing
        text = f"{100 * p['rate']:.1f}%"
        lo_hi = p.get("ci95")
        if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2:
            text += f" [{100 * lo_hi[0]:.0f}-{100 * lo_hi[1]:.0f}]"
        return text + (f" n={p['n']}" if isinstance(p.get("n"), int) else "")
    return missing if p is None else f"{100 * p:.1f}%"


# --------------------------------------------------------------------------- reward-model pairs


def reliability_bins(deltas: Sequence[float], p_chosen: Sequence[float],
                     bins: int = 10) -> list[dict[str, float]]:
    """The reliability diagram: for each non-empty confidence bin over [0.5, 1], its mean
    confidence, mean correctness and count. Pairs with p = 0.5 have no preferred side and are
    skipped."""
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, sum confidence, sum correctness
    for d, p in zip(deltas, p_chosen):
        if p == 0.5:
            continue
        conf = 1.0 / (1.0 + math.exp(-abs(d)))
        correct = p if d >= 0 else 1.0 - p
        b = min(int((conf - 0.5) / 0.5 * bins), bins - 1)
        totals[b][0] += 1
        totals[b][1] += conf
        totals[b][2] += correct
    return [{"confidence": sc / c, "accuracy": sk / c, "count": c}
            for c, sc, sk in totals if c]


def expected_calibration_error(deltas: Sequence[float], p_chosen: Sequence[float],
                               bins: int = 10) -> float | None:
    """ECE over reliability_bins (see the module docstring); None when no pair has a
    preferred side."""
    rows = reliability_bins(deltas, p_chosen, bins)
    n = sum(r["count"] for r in rows)
    if not n:
        return None
    return sum(r["count"] / n * abs(r["confidence"] - r["accuracy"]) for r in rows)


NO_PRINCIPLE = "(none)"  # pairs labeled under no principle (human pairs), by principle


def accuracy_by_principle(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float],
                          p_chosen: Sequence[float], principles: Sequence[Sequence[str]]
                          ) -> dict[str, dict[str, Any]]:
    """pair_metrics' accuracy per principle: a pair counts under each principle it was
    labeled under (K > 1: under each), one labeled under none under NO_PRINCIPLE; pairs
    with p = 0.5 have no preferred side and are left out, as there. Sorted by principle."""
    hits: dict[str, list[float]] = {}
    for c, r, p, ps in zip(chosen_rewards, rejected_rewards, p_chosen, principles):
        if p == 0.5:
            continue
        h = hit(c - r, 0.0) if p > 0.5 else hit(0.0, c - r)
        for pid in dict.fromkeys(ps or [NO_PRINCIPLE]):
            hits.setdefault(pid, []).append(h)
    return {pid: {"n": len(v), "accuracy": sum(v) / len(v),
                  "accuracy_ci95": list(wilson(sum(v), len(v)))}
            for pid, v in sorted(hits.items())}


def pair_metrics(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float],
                 p_chosen: Sequence[float], chosen_lengths: Sequence[int],
                 rejected_lengths: Sequence[int]) -> dict[str, Any]:
    """Accuracy (ties half) against the label's preferred side, on pairs with p != 0.5;
    margin = mean(r_chosen - r_rejected) over all pairs; the length baseline is the accuracy
    of "prefer the longer answer" (characters) on the same pairs as accuracy."""
    deltas = [c - r for c, r in zip(chosen_rewards, rejected_rewards)]
    hits, longer = [], []
    for d, p, lc, lr in zip(deltas, p_chosen, chosen_lengths, rejected_lengths):
        if p == 0.5:
            continue
        hits.append(hit(d, 0.0) if p > 0.5 else hit(0.0, d))
        longer.append(hit(lc, lr) if p > 0.5 else hit(lr, lc))
    n = len(hits)
    acc = sum(hits) / n if n else None
    ci = wilson(sum(hits), n) if n else None
    return {
        "n": n,
        "pairs": len(deltas),
        "accuracy": acc,
        "accuracy_ci95": list(ci) if ci else None,
        "margin": mean(deltas),
        "rewards/chosen": mean(list(chosen_rewards)),
        "rewards/rejected": mean(list(rejected_rewards)),
        "ece": expected_calibration_error(deltas, p_chosen),
        "bins": reliability_bins(deltas, p_chosen),
        "length_baseline": sum(longer) / n if n else None,
    }
