"""Pointwise AI feedback: each response judged alone with a yes/no question, pairs
compared by the difference of the verdicts.

For one response under one principle the feedback model sees the conversation ending
in that reply and the principle's judgement question ("Is the assistant's last reply
...? Answer Yes or No.", `cai.prompting.judgement_messages`). Its verdict score is the
log-odds of Yes over No in the first token of its answer, both spellings counted:

    s = logsumexp(log P("Yes"), log P(" Yes")) - logsumexp(log P("No"), log P(" No"))

Scoring text: `render_chat(messages)` (the generation prompt opens the assistant turn);
the four answers are scored with `continuation_logprobs`, the same path the pairwise
labeler uses (vLLM: one-token requests sharing the cached prompt; transformers: one
forward pass per prompt and answer).

A pair (x, y) under principle k gets P_k(x > y) = sigmoid((s_x - s_y) / tau), and the K
principles are averaged as in pairwise mode. tau only calibrates: it never changes which
response wins under one principle. It is set, or fitted by maximum likelihood on
human-labeled pairs (`fit_tau`).

Nothing here depends on where a response sits, so there is no position bias to cancel,
and one response is scored once however many pairs it is in: `ResponseScorer` caches
scores by (principle, conversation, response).
"""

from __future__ import annotations

import json
import math
from typing import Callable, Iterable, Sequence

from pydantic import BaseModel

from cai.backends import Backend
from cai.constitution import Constitution, Principle, sample_principles
from cai.feedback import ensemble
from cai.prompting import JUDGEMENT_ANSWERS, judgement_messages
from cai.schema import prompt_key

# For a judge without a registry default. With the embedded model the maximum-likelihood
# tau on 221 BIG-bench HHH pairs was 1.13 (README); 1 keeps labels soft but informative.
DEFAULT_TAU = 1.0
TAU_RANGE = (1e-2, 1e2)  # fit_tau searches here; the top end means "no signal"


def logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    if m == -math.inf:
        return -math.inf
    return m + math.log(math.fsum(math.exp(x - m) for x in xs))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def verdict_score(yes: Sequence[float], no: Sequence[float]) -> float:
    """Log-odds of Yes over No from the log-probs of each verdict's spellings."""
    return logsumexp(yes) - logsumexp(no)


def pair_prob(s_first: float, s_second: float, tau: float) -> float:
    """P(first > second) = sigmoid((s_first - s_second) / tau)."""
    if tau <= 0:
        raise ValueError("tau must be > 0")
    return sigmoid((s_first - s_second) / tau)


def log_likelihood(diffs: Sequence[Sequence[float]], tau: float) -> float:
    """Sum over pairs of log P(reference choice), P = mean over principles of
    sigmoid(d / tau); `diffs[i]` holds s(reference choice) - s(other) per principle."""
    return math.fsum(math.log(max(ensemble([sigmoid(d / tau) for d in ds]), 1e-300))
                     for ds in diffs)


def fit_tau(diffs: Sequence[Sequence[float]], lo: float = TAU_RANGE[0],
            hi: float = TAU_RANGE[1], iters: int = 100) -> float:
    """The maximum-likelihood tau on labeled pairs (golden-section search on log tau).

    With one principle the log-likelihood is concave in 1/tau, so the search finds the
    optimum; a set the scores get mostly wrong pushes tau to `hi` (labels near 0.5)."""
    if not diffs:
        raise ValueError("fit_tau needs at least one labeled pair")
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = log_likelihood(diffs, math.exp(c)), log_likelihood(diffs, math.exp(d))
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = log_likelihood(diffs, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = log_likelihood(diffs, math.exp(d))
    return math.exp((a + b) / 2)


class Judgement(BaseModel):
    """One response's verdict under one principle."""

    score: float  # log-odds of Yes over No
    yes: list[float]  # log P of each spelling in JUDGEMENT_ANSWERS["yes"]
    no: list[float]


def _key(principle: Principle, conversation: list[dict[str, str]], response: str) -> str:
    # Exact texts: the scored prompt is built from them as written.
    return json.dumps([principle.id, [[m["role"], m["content"]] for m in conversation], response],
                      ensure_ascii=False)


class ResponseScorer:
    """Judges responses, each (principle, conversation, response) once per scorer.

    `score` sends every response it has not seen to the backend in one
    `continuation_logprobs` call; `prompts_scored` counts the distinct judgements sent."""

    def __init__(self, backend: Backend, constitution: Constitution, few_shot: bool = True):
        self.backend, self.constitution, self.few_shot = backend, constitution, few_shot
        self.cache: dict[str, Judgement] = {}
        self.prompts_scored = 0

    def messages(self, principle: Principle, conversation: list[dict[str, str]],
                 response: str) -> list[dict[str, str]]:
        return judgement_messages(self.constitution, principle, conversation, response,
                                  few_shot=self.few_shot)

    def score(self, items: Sequence[tuple[Principle, list[dict[str, str]], str]],
              log: Callable[[str], None] | None = None) -> list[Judgement]:
        keys = [_key(*it) for it in items]
        todo: dict[str, tuple[Principle, list[dict[str, str]], str]] = {}
        for k, it in zip(keys, items):
            if k not in self.cache and k not in todo:
                todo[k] = it
        if todo:
            answers = [a for v in ("yes", "no") for a in JUDGEMENT_ANSWERS[v]]
            texts = [self.backend.render_chat(self.messages(*it)) for it in todo.values()]
            if log:
                log(f"scoring: {len(texts)} responses x {len(answers)} answers"
                    f" ({len(keys) - len(texts)} judgements reused)")
            lps = self.backend.continuation_logprobs([t for t in texts for _ in answers],
                                                     [a for _ in texts for a in answers])
            n_yes = len(JUDGEMENT_ANSWERS["yes"])
            for i, k in enumerate(todo):
                row = lps[i * len(answers):(i + 1) * len(answers)]
                yes, no = row[:n_yes], row[n_yes:]
                self.cache[k] = Judgement(score=verdict_score(yes, no), yes=yes, no=no)
            self.prompts_scored += len(todo)
        return [self.cache[k] for k in keys]


class PointwiseVerdict(BaseModel):
    """One principle's judgement of one pair: each response's verdict score."""

    principle: str
    scores: list[float]  # [s_first, s_second]
    p_first: float  # sigmoid((s_first - s_second) / tau)
    judgements: list[Judgement]  # first, second


def pointwise_verdict(principle: str, first: Judgement, second: Judgement, tau: float
                      ) -> PointwiseVerdict:
    return PointwiseVerdict(principle=principle, scores=[first.score, second.score],
                            p_first=pair_prob(first.score, second.score, tau),
                            judgements=[first, second])


def reference_diffs(labels: list, human: dict[str, str]) -> list[list[float]]:
    """Per labeled pair (matched by key), per principle: s(human choice) - s(other)."""
    from cai.label.inputs import normalize

    out = []
    for lab in labels:
        want = human.get(lab.pair.key)
        if want is None:
            continue
        sign = 1.0 if normalize(lab.pair.first) == want else -1.0
        out.append([sign * (v.scores[0] - v.scores[1]) for v in lab.verdicts])
    return out


class ResponseScore(BaseModel):
    """A response's verdict score: the mean over the principles it was judged under."""

    score: float
    principles: dict[str, float]


def score_responses(backend: Backend, constitution: Constitution,
                    rows: Iterable[tuple[list[dict[str, str]], str]], *,
                    principle_ids: Sequence[str] | None = None, k: int = 1, seed: int = 0,
                    few_shot: bool = True, scorer: ResponseScorer | None = None,
                    log: Callable[[str], None] | None = None) -> list[ResponseScore]:
    """Each (conversation, response)'s verdict score, usable outside labeling (e.g. "does
    this response need revising?", eval). Judged under `principle_ids` when given, else
    under `k` principles drawn from (seed, conversation, response); > 0 means the judge
    leans Yes. Responses seen before by `scorer` are not scored again."""
    rows = [(list(conv), resp) for conv, resp in rows]
    scorer = scorer or ResponseScorer(backend, constitution, few_shot=few_shot)
    fixed = [constitution.principle(pid) for pid in principle_ids] if principle_ids else None
    drawn = [fixed or sample_principles(constitution, seed,
                                        f"{prompt_key(conv)}/{' '.join(resp.split())}/judge", k)
             for conv, resp in rows]
    items = [(p, conv, resp) for (conv, resp), ps in zip(rows, drawn) for p in ps]
    js = iter(scorer.score(items, log=log))
    out = []
    for ps in drawn:
        per = {p.id: next(js).score for p in ps}
        out.append(ResponseScore(score=ensemble(list(per.values())), principles=per))
    return out
