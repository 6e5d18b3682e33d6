"""Label quality: how far to trust a run of AI feedback, computed from its records alone
(so it can be recomputed from any labeled store).

- Mode: "pairwise" or "pointwise", from the records (`metadata.ai_feedback.mode`).
- Position consistency (pairwise only): share of (pair, principle) comparisons whose
  winner is the same in both orders. A judge that always answers "(A)" scores 0, a coin
  flip about 0.5, and a judge driven by content alone 1. Pointwise verdicts see one
  response at a time, so they have no position to be biased by.
- A-rate (pairwise only): share of single-order judgements that picked (A); 0.5 means no
  position bias.
- Label entropy: mean binary entropy (bits) of the final p_chosen; 1 = coin flips.
- Agreement with the revision direction (inputs of source "ai-revision"): share of pairs
  where the labeler prefers the revision (the input's chosen).
- Accuracy against human labels (`--eval-against`): share of matched pairs where the
  labeler prefers the human's choice; `mean_p` is the mean probability it gives it.
- Length: `longer_chosen_rate` is the share of records whose chosen answer (the labeler's
  pick) is the longer one. Each agreement also carries `longer_baseline`, the rate a
  "prefer the longer answer" rule would get on the same pairs: a labeler that does no
  better than that may be judging length, the bias a reward model then learns to exploit.
- Length-controlled accuracy: each agreement is also split by whether the reference choice
  is the longer answer (`when_longer`) or the shorter (`when_shorter`; equal lengths are in
  neither), and `length_balanced` is the mean of the two rates. "Prefer the longer
  answer" scores 100% and 0% there, so 50% balanced, whatever the mix of the set: a labeler
  above 50% balanced knows something beyond length.
- Every rate comes with n and a 95% interval: Wilson's score interval for a rate, and for
  the length-balanced mean a normal approximation, +-1.96 * sqrt(v1 + v2) / 2 with v the
  binomial variance of each half (clipped to [0, 1]).
Ties (p exactly 0.5, or equal lengths) count half.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

from pydantic import BaseModel

from cai.feedback import entropy_bits
from cai.label.inputs import normalize, pair_key
from cai.records import PreferenceRecord
from cai.stats import Z95, hit, mean, pct, wilson


class Rate(BaseModel):
    """A share of n pairs with its 95% interval."""

    pairs: int = 0
    rate: float | None = None
    ci95: tuple[float, float] | None = None


def _rate(hits: list[float]) -> Rate:
    return Rate(pairs=len(hits), rate=mean(hits),
                ci95=wilson(math.fsum(hits), len(hits)) if hits else None)


def balanced(longer: Rate, shorter: Rate) -> Rate | None:
    """Mean of the two length strata's rates; its interval by the normal approximation."""
    if not longer.pairs or not shorter.pairs:
        return None
    a, b = longer.rate, shorter.rate
    m = (a + b) / 2
    half = Z95 * math.sqrt(a * (1 - a) / longer.pairs + b * (1 - b) / shorter.pairs) / 2
    return Rate(pairs=longer.pairs + shorter.pairs, rate=m,
                ci95=(max(0.0, m - half), min(1.0, m + half)))


class Agreement(BaseModel):
    pairs: int = 0
    rate: float | None = None  # share agreeing (ties count half)
    ci95: tuple[float, float] | None = None  # Wilson interval of `rate`
    mean_p: float | None = None  # mean probability given to the reference choice
    longer_baseline: float | None = None  # rate of "prefer the longer answer" on these pairs
    when_longer: Rate = Rate()  # pairs where the reference choice is the longer answer
    when_shorter: Rate = Rate()  # ... the shorter one
    length_balanced: Rate | None = None  # mean of the two


class PrincipleStats(BaseModel):
    comparisons: int
    position_consistency: float


class LabelReport(BaseModel):
    mode: str | None = None  # "pairwise", "pointwise", or "mixed"
    pairs: int
    comparisons: int  # pairs x principles
    position_consistency: float | None
    a_rate: float | None  # share of single-order judgements choosing (A)
    mean_entropy_bits: float | None
    mean_p_chosen: float | None
    longer_chosen_rate: float | None = None  # share of records whose chosen is the longer
    revision_agreement: Agreement
    human_accuracy: Agreement | None = None
    by_principle: dict[str, PrincipleStats] = {}


def _agreement(probs: list[float], longer: list[float]) -> Agreement:
    """probs: probability the labeler gives the reference's choice, one per pair; longer:
    per pair, hit(len(reference choice), len(the other answer))."""
    hits = [hit(p, 0.5) for p in probs]
    when_longer = _rate([h for h, lg in zip(hits, longer) if lg == 1.0])
    when_shorter = _rate([h for h, lg in zip(hits, longer) if lg == 0.0])
    overall = _rate(hits)
    return Agreement(pairs=len(probs), rate=overall.rate, ci95=overall.ci95,
                     mean_p=mean(probs), longer_baseline=mean(longer),
                     when_longer=when_longer, when_shorter=when_shorter,
                     length_balanced=balanced(when_longer, when_shorter))


def build_report(records: Iterable[PreferenceRecord],
                 human: dict[str, str] | None = None) -> LabelReport:
    """`records`: ai-feedback records from `cai label`. `human`: pair key -> normalised
    text of the human-preferred answer (`inputs.human_preferences`)."""
    recs = list(records)
    consistent: list[float] = []
    a_picks: list[float] = []
    per_principle: dict[str, list[float]] = defaultdict(list)
    revision: list[float] = []
    vs_human: list[float] = []
    revision_longer: list[float] = []
    human_longer: list[float] = []
    chosen_longer: list[float] = []
    modes: set[str] = set()
    for r in recs:
        fb = r.metadata["ai_feedback"]
        modes.add(fb.get("mode", "pairwise"))  # records from before pointwise mode
        chosen, rejected = r.chosen[-1].content, r.rejected[-1].content
        chosen_longer.append(hit(len(chosen), len(rejected)))
        for v in fb["verdicts"]:
            if "p_a" not in v:  # pointwise: one response at a time, no orders
                continue
            c = 1.0 if v["consistent"] else 0.0
            consistent.append(c)
            per_principle[v["principle"]].append(c)
            a_picks += [1.0 if p > 0.5 else 0.0 for p in v["p_a"]]
        if r.metadata.get("input", {}).get("source") == "ai-revision":
            revision.append(fb["p_first"])  # first = the input's chosen = the revision
            first, second = (chosen, rejected) if fb["chosen_is_first"] else (rejected, chosen)
            revision_longer.append(hit(len(first), len(second)))
        if human is not None:
            prompt = [m.model_dump() for m in r.prompt]
            want = human.get(pair_key(prompt, chosen, rejected))
            if want is not None:
                agree = normalize(chosen) == want
                vs_human.append(r.p_chosen if agree else 1.0 - r.p_chosen)
                picked, other = (chosen, rejected) if agree else (rejected, chosen)
                human_longer.append(hit(len(picked), len(other)))
    return LabelReport(
        mode=None if not modes else modes.pop() if len(modes) == 1 else "mixed",
        pairs=len(recs),
        comparisons=len(consistent),
        position_consistency=mean(consistent),
        a_rate=mean(a_picks),
        mean_entropy_bits=mean([entropy_bits(r.p_chosen) for r in recs]),
        mean_p_chosen=mean([r.p_chosen for r in recs]),
        longer_chosen_rate=mean(chosen_longer),
        revision_agreement=_agreement(revision, revision_longer),
        human_accuracy=_agreement(vs_human, human_longer) if human is not None else None,
        by_principle={k: PrincipleStats(comparisons=len(v), position_consistency=sum(v) / len(v))
                      for k, v in sorted(per_principle.items())},
    )


def _rate_text(r: Rate | None) -> str:
    if r is None or not r.pairs:
        return "-"
    lo, hi = r.ci95
    return f"{pct(r.rate)} [{100 * lo:.1f}, {100 * hi:.1f}] (n={r.pairs})"


def _length_lines(a: Agreement) -> list[str]:
    return [f"  where it is longer   {_rate_text(a.when_longer)}",
            f"  where it is shorter  {_rate_text(a.when_shorter)}",
            f"  length-balanced      {_rate_text(a.length_balanced)}  ('prefer longer': 50%)"]


def format_report(rep: LabelReport) -> str:
    pointwise = rep.mode == "pointwise"
    lines = [
        f"pairs labeled          {rep.pairs}" + ("" if pointwise else
                                                 f" ({rep.comparisons} pair x principle comparisons)")
        + (f"  [{rep.mode}]" if rep.mode else ""),
    ]
    if not pointwise:
        lines += [
            f"position consistency   {pct(rep.position_consistency)}  (same winner in both orders)",
            f"(A) chosen per order   {pct(rep.a_rate)}  (50% = no position bias)"]
    lines += [
        f"mean label entropy     {'-' if rep.mean_entropy_bits is None else f'{rep.mean_entropy_bits:.3f}'} bits"
        f"  (mean p_chosen {'-' if rep.mean_p_chosen is None else f'{rep.mean_p_chosen:.3f}'})",
    ]
    lines.append(f"chosen is the longer   {pct(rep.longer_chosen_rate)}  (length bias of the labels)")
    ra = rep.revision_agreement
    lines.append(f"revision agreement     {pct(ra.rate)}  ({ra.pairs} ai-revision pairs; "
                 f"'prefer longer' would get {pct(ra.longer_baseline)})")
    if ra.pairs:
        lines += _length_lines(ra)
    if rep.human_accuracy is not None:
        h = rep.human_accuracy
        mp = "-" if h.mean_p is None else f"{h.mean_p:.3f}"
        ci = "" if h.ci95 is None else f" [{100 * h.ci95[0]:.1f}, {100 * h.ci95[1]:.1f}]"
        lines.append(f"accuracy vs human      {pct(h.rate)}{ci}  ({h.pairs} matched pairs, "
                     f"mean p(human choice) {mp}; 'prefer longer' would get "
                     f"{pct(h.longer_baseline)})")
        if h.pairs:
            lines += _length_lines(h)
    return "\n".join(lines)
