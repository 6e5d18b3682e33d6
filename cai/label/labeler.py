"""Label pairs with the feedback model: every comparison of a run in one scoring call.

For each pair, K principles are drawn from (seed, pair key) — the key ignores the pair's
order, so a pair and its swap are judged under the same principles. Each (pair, principle)
is asked in both orders; each of those prompts is scored with both option continuations.
That is pairs x K x 2 orders x 2 options continuations, sent to `continuation_logprobs` at
once (the vLLM backend scores them as next-token requests per distinct prefix, so the
few-shot prefix and each prompt shared by its two options come from the prefix cache).
CoT mode first generates every reasoning in one `generate` call.

`mode="pointwise"` judges each response alone instead (cai.label.pointwise): same principle
draws, one scoring call for every distinct response, P = sigmoid((s_first - s_second)/tau).

Scoring text: `render_chat(messages)` (the generation prompt opens the assistant turn) +
[CoT reasoning + newline] + ANSWER_PREFIX, then the continuations " (A)" / " (B)".
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.backends import Backend, SamplingConfig
from cai.backends.context import context_fit
from cai.constitution import FRAME, Constitution, Principle, sample_principles
from cai.feedback import COT_CLAMP, clamp, consistent, ensemble, option_prob, pair_prob
import cai.label.cot as cot
from cai.label.inputs import Pair
from cai.label.pointwise import PointwiseVerdict, ResponseScorer, pointwise_verdict
from cai.prompting import (ANSWER_PREFIX, COMPARISON_OPTIONS, JUDGEMENT_ANSWERS, comparison_messages,
                           judgement_messages)
from cai.records import PreferenceRecord
from cai.schema import stable_id

ORDERS = ("ab", "ba")  # "ab": first shown as (A); "ba": second shown as (A)
MODES = ("pairwise", "pointwise")


class LabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["pairwise", "pointwise"] | None = Field(
        None, description="pairwise: (A)/(B) comparison in both orders; pointwise: a yes/no "
                          "verdict per response. None: the feedback model's default "
                          "(cai.models.feedback_defaults)")
    tau: float | Literal["fit"] | None = Field(
        None, description="pointwise: P = sigmoid((s_first - s_second) / tau); 'fit': maximum "
                          "likelihood on the human-labeled pairs; None: the model's default")
    principles: int = Field(1, ge=1, description="K principles ensembled per pair")
    seed: int = Field(0, description="principle draws (and CoT sampling)")
    few_shot: bool = Field(True, description="show the constitution's feedback examples first")
    cot: bool = Field(False, description="reason first, then answer; p clamped to cot_clamp")
    cot_max_tokens: int = Field(256, ge=1, description="tokens of CoT reasoning")
    cot_temperature: float = Field(0.0, ge=0.0, description="0 = greedy reasoning")
    cot_clamp: tuple[float, float] = Field(COT_CLAMP, description="CoT: p(A) clamped to "
                                                                  "[low, high]")

    @model_validator(mode="after")
    def _check(self) -> "LabelConfig":
        if isinstance(self.tau, float) and self.tau <= 0:
            raise ValueError("tau must be > 0 (or 'fit')")
        if self.cot and self.mode == "pointwise":
            raise ValueError("cot applies to pairwise mode only")
        return self


class Verdict(BaseModel):
    """One principle's judgement of one pair, in both orders."""

    principle: str
    logprobs: list[list[float]]  # per order ("ab", "ba"): [log P(" (A)"), log P(" (B)")]
    p_a: list[float]  # per order: p(A) (clamped in CoT mode)
    p_first: float  # P(first > second) = mean(p_ab(A), p_ba(B))
    consistent: bool  # the same response wins in both orders
    reasoning: list[str] | None = None  # CoT: per order


class Label(BaseModel):
    pair: Pair
    p_first: float  # ensemble over verdicts
    verdicts: list[Verdict] | list[PointwiseVerdict]


def verdict(principle: str, lp_ab: tuple[float, float], lp_ba: tuple[float, float],
            clamp_to: tuple[float, float] | None = None,
            reasoning: list[str] | None = None) -> Verdict:
    """Pure: the two orders' option log-probs -> per-order p(A) and P(first > second)."""
    p_a = [option_prob(*lp_ab), option_prob(*lp_ba)]
    if clamp_to is not None:
        p_a = [clamp(p, *clamp_to) for p in p_a]
    return Verdict(principle=principle, logprobs=[list(lp_ab), list(lp_ba)], p_a=p_a,
                   p_first=pair_prob(*p_a), consistent=consistent(*p_a), reasoning=reasoning)


def principles_for(c: Constitution, pair: Pair, config: LabelConfig) -> list[Principle]:
    return sample_principles(c, config.seed, f"{pair.key}/feedback", config.principles)


def label_pairs_pointwise(backend: Backend, c: Constitution, pairs: list, config: Any,
                          tau: float, scorer: ResponseScorer | None = None,
                          log: Callable[[str], None] | None = None) -> list:
    """Label every pair from its responses' verdict scores (one scoring call for all
    responses not yet in `scorer`'s cache). Principles are drawn as in pairwise mode."""
    if not pairs:
        return []
    scorer = scorer or ResponseScorer(backend, c, few_shot=config.few_shot)
    drawn = [principles_for(c, pair, config) for pair in pairs]
    items = [(p, pair.prompt, r) for pair, ps in zip(pairs, drawn) for p in ps
             for r in (pair.first, pair.second)]
    js = scorer.score(items, log=log)
    labels, i = [], 0
    for pair, ps in zip(pairs, drawn):
        verdicts = []
        for p in ps:
            verdicts.append(pointwise_verdict(p.id, js[i], js[i + 1], tau))
            i += 2
        labels.append(Label(pair=pair, p_first=ensemble([v.p_first for v in verdicts]),
                            verdicts=verdicts))
    return labels


def comparison_conversations(c: Constitution, pairs: list[Pair], config: LabelConfig
                             ) -> tuple[list[list[Principle]], list[list[dict[str, str]]]]:
    """(principles per pair, conversations) with conversations laid out pair-major, then
    principle, then order."""
    drawn, convs = [], []
    for pair in pairs:
        ps = principles_for(c, pair, config)
        drawn.append(ps)
        for p in ps:
            for a, b in ((pair.first, pair.second), (pair.second, pair.first)):
                msgs = comparison_messages(c, p, pair.prompt, a, b, few_shot=config.few_shot)
                convs.append(cot.with_cot_request(msgs) if config.cot else msgs)
    return drawn, convs


def fitting_pairs(backend: Backend, c: Constitution, pairs: list[Pair], config: LabelConfig
                  ) -> tuple[list[Pair], list[tuple[Pair, str]]]:
    """(pairs whose every comparison fits the feedback model's context, [(pair, why not)]).

    One over-long request fails the engine's whole batch, so over-long pairs are set aside
    first. A comparison needs its rendered prompt, the CoT reasoning budget (CoT mode), the
    answer prefix and the longest option."""
    if backend.context_length() is None or backend.tokenizer is None:
        return pairs, []  # nothing to check against
    if config.mode == "pointwise":
        reserve = 0
        options = [a for v in JUDGEMENT_ANSWERS.values() for a in v]
        convs = [judgement_messages(c, p, pair.prompt, r, few_shot=config.few_shot)
                 for pair in pairs for p in principles_for(c, pair, config)
                 for r in (pair.first, pair.second)]
    else:
        reserve = config.cot_max_tokens if config.cot else 0
        options = [ANSWER_PREFIX + o for o in COMPARISON_OPTIONS]
        _, convs = comparison_conversations(c, pairs, config)
    per_pair = len(convs) // len(pairs) if pairs else 0
    fitting, long = [], []
    for i, pair in enumerate(pairs):
        # the pair's longest prompt, scored with the longest answer
        worst = max((context_fit(backend, conv, reserve=reserve, suffix=options)
                     for conv in convs[i * per_pair:(i + 1) * per_pair]),
                    key=lambda f: f.tokens or 0)
        if not worst.ok:
            kind = "judgement" if config.mode == "pointwise" else "comparison"
            long.append((pair, f"{kind} prompt needs {worst.tokens + reserve} tokens"
                               + (f" (with {reserve} for reasoning)" if config.cot else "")
                               + f"; the feedback model's context is {worst.limit}"))
        else:
            fitting.append(pair)
    return fitting, long


def _chunks(items: list[Any], parts: int = 20, least: int = 64) -> list[list[Any]]:
    """About `parts` engine calls of at least `least` requests each: enough calls for a
    progress bar with an ETA, each still large enough to keep the engine's batch full (the
    prefix cache carries shared prefixes from one call to the next)."""
    size = max(least, -(-len(items) // parts))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _bar(total: int, desc: str, unit: str, enabled: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=False)


def label_pairs(backend: Backend, c: Constitution, pairs: list[Pair], config: LabelConfig,
                log: Callable[[str], None] | None = None, progress: bool = True, *,
                tau: float | None = None, scorer: ResponseScorer | None = None) -> list[Label]:
    """Label every pair. Pairwise: the comparisons are scored (CoT: reasoned, then scored) in
    about 20 engine calls, with a progress bar and ETA on stderr unless `progress` is False.
    Pointwise mode needs `tau` as a number (`config.tau`, resolved) and may share a `scorer`
    (its cache) across calls."""
    if config.mode == "pointwise":
        t = tau if tau is not None else config.tau
        if not isinstance(t, float):
            raise ValueError("pointwise labeling needs tau as a number (resolve 'fit' first)")
        return label_pairs_pointwise(backend, c, pairs, config, t, scorer=scorer, log=log)
    if not pairs:
        return []
    drawn, convs = comparison_conversations(c, pairs, config)
    reasonings: list[str | None] = [None] * len(convs)
    if config.cot:
        if log:
            log(f"reasoning: {len(convs)} comparisons")
        sampling = SamplingConfig(temperature=config.cot_temperature,
                                  max_tokens=config.cot_max_tokens, seed=config.seed, stop=cot.STOP)
        reasonings = []
        with _bar(len(convs), "label: reasoning", "cmp", progress) as bar:
            for chunk in _chunks(convs):
                reasonings += [g[0].text for g in backend.generate(chunk, sampling)]
                bar.update(len(chunk))
    texts = [cot.answer_text(backend.render_chat(conv), r) for conv, r in zip(convs, reasonings)]
    if log:
        log(f"scoring: {len(texts)} prompts x {len(COMPARISON_OPTIONS)} options")
    lps: list[float] = []
    with _bar(len(texts), "label: scoring", "cmp", progress) as bar:
        for chunk in _chunks(texts):
            lps += backend.continuation_logprobs([t for t in chunk for _ in COMPARISON_OPTIONS],
                                                 [o for _ in chunk for o in COMPARISON_OPTIONS])
            bar.update(len(chunk))

    labels, i = [], 0  # i indexes comparisons (pair, principle, order)
    for pair, ps in zip(pairs, drawn):
        verdicts = []
        for p in ps:
            lp = [(lps[2 * (i + o)], lps[2 * (i + o) + 1]) for o in range(len(ORDERS))]
            rs = [reasonings[i + o] or "" for o in range(len(ORDERS))] if config.cot else None
            verdicts.append(verdict(p.id, lp[0], lp[1], config.cot_clamp if config.cot else None, rs))
            i += len(ORDERS)
        labels.append(Label(pair=pair, p_first=ensemble([v.p_first for v in verdicts]),
                            verdicts=verdicts))
    return labels


def to_record(label: Label, labeler: str, run: dict[str, Any],
              hashes: dict[str, str] | None = None, input_hash: str | None = None
              ) -> PreferenceRecord:
    """The labeled pair as an "ai-feedback" record, oriented by the labeler's preference:
    chosen is the response it prefers, so p_chosen >= 0.5 (an exact tie keeps input order).
    `metadata.ai_feedback.chosen_is_first` and `p_first` keep the input orientation;
    `metadata.input` the input's provenance (id, source, its own label). `hashes`
    (`cai.constitution.feedback_hashes`): `ai_feedback.principle_hashes` keeps the frame's
    and those of the principles this label used; `input_hash` (`cai.label.incremental`) what
    else the label depends on. Both let a rerun keep the label when neither changed."""
    pair = label.pair
    first_wins = label.p_first >= 0.5
    chosen, rejected = (pair.first, pair.second) if first_wins else (pair.second, pair.first)
    prompt = pair.prompt
    chosen_m = [{"role": "assistant", "content": chosen}]
    rejected_m = [{"role": "assistant", "content": rejected}]
    feedback = {
        "p_first": label.p_first,
        "chosen_is_first": first_wins,
        **({"orders": list(ORDERS)} if label.verdicts and isinstance(label.verdicts[0], Verdict) else {}),
        "verdicts": [v.model_dump(exclude_none=True) for v in label.verdicts],
        **run,
    }
    if hashes:
        feedback["principle_hashes"] = {k: hashes[k] for k in
                                        (FRAME, *(v.principle for v in label.verdicts))}
    if input_hash:
        feedback["input_hash"] = input_hash
    return PreferenceRecord(
        id=stable_id(prompt, chosen_m, rejected_m),
        prompt=prompt, chosen=chosen_m, rejected=rejected_m,
        p_chosen=label.p_first if first_wins else 1.0 - label.p_first,
        source="ai-feedback",
        principle_ids=[v.principle for v in label.verdicts],
        labeler=labeler,
        metadata={"ai_feedback": feedback, "input": pair.input},
    )


def run_info(c: Constitution, config: LabelConfig, tau: float | None = None) -> dict[str, Any]:
    """The run's settings, stored in every record (and the manifest). `mode` says which
    labeler produced the record; pointwise runs carry the tau used (`tau`, a number) and
    how it was set (`tau_fitted`)."""
    mode = config.mode or "pairwise"
    info: dict[str, Any] = {
        "mode": mode, "constitution": c.name, "constitution_hash": c.content_hash(),
        "principles_k": config.principles, "seed": config.seed, "few_shot": config.few_shot,
        "cot": config.cot, "clamp": list(config.cot_clamp) if config.cot else None}
    if mode == "pointwise":
        t = tau if tau is not None else config.tau
        info.update(tau=t, tau_fitted=config.tau == "fit")
    return info
