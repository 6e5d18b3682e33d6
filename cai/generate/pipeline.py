"""The SL-CAI loop, stage by stage: respond -> (critique -> revise) x rounds.

Each stage is ONE backend call over every pending chain of a chunk (never per prompt),
so the engine batches them and its prefix cache reuses the shared system prompt and
few-shot turns, which the prompt builders in `cai.prompting` put first.

Round r critiques and revises the latest revision (round 1: the initial response) under a
freshly sampled principle, drawn from (seed, f"{record_id}/round{r-1}") alone so a resumed
run draws the same one. A chain whose output is unusable stops there with a status:

    degenerate:empty        the response, a critique or a revision is empty
    degenerate:truncated    a revision cut off at max_tokens
    degenerate:repetition   a revision that loops
    degenerate:identical    a revision equal to the text it revises
    degenerate:copied       a revision that echoes a few-shot example (even paraphrased)
    degenerate:echo         a revision that repeats its critique instead of answering
    degenerate:unresponsive a revision that talks about "the response" instead of answering,
                            or no longer addresses its prompt (see `relevance`)
    skipped:too-long        a stage's prompt would not fit the model's context

Two more steps, both scored with the loaded model (`continuation_logprobs`, one call each):
  - routing (`--route auto`, before round 1): which principles fit the prompt (`routing`);
  - the no-change verdict (before each critique): does the answer violate the drawn
    principle at all? An answer judged fine is kept; with no revision made yet the record
    ends as `ok:unchanged` (an SFT row, no preference pair).

A truncated or looping initial response or critique is kept (a flag, not a failure): the
revision is what has to be good, and a bad initial response is exactly what revision is for.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

from cai.backends import Backend, Generation, SamplingConfig
from cai.backends.context import context_fit
from cai.constitution import Constitution, Principle, sample_principle
import cai.generate.relevance as relevance
import cai.generate.routing as routing
import cai.generate.verdict as verdict
from cai.generate.config import GenerateConfig, effective_route
from cai.prompts import PromptItem
from cai.generate.quality import Problem, meta_commentary, problem
from cai.prompting import clean_output, critique_messages, response_messages, revision_messages


@dataclass
class Round:
    """One critique-revision round of a chain; filled in as its stages run."""

    round: int  # 1-based
    principle_id: str
    critique: str | None = None
    critique_finish: str | None = None
    critique_tokens: int | None = None
    revision: str | None = None
    revision_finish: str | None = None
    revision_tokens: int | None = None
    revision_candidate: int | None = None  # which of the revision candidates was kept
    rejected_candidates: list[str] | None = None  # problem kinds of those passed over
    p_no_change: float | None = None  # the no-change verdict before the critique
    revision_relevance: float | None = None  # the kept revision's PMI with its prompt


@dataclass
class Chain:
    """One record in flight: a prompt, one sampled response, and its rounds."""

    id: str
    item: PromptItem
    sample_index: int
    response: str = ""
    response_finish: str = ""
    response_tokens: int = 0
    current: str = ""  # the text the next round revises
    rounds: list[Round] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""
    flags: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds of the batched calls it was in
    route: str = ""  # principle id or "benign" (route auto), "tags", or "random"
    route_tags: tuple[str, ...] = ()  # the tags its principle draws use
    route_score: float | None = None  # route auto: the best candidate's gain (nats)
    settled: bool = False  # judged to need no (further) change

    @property
    def active(self) -> bool:
        return self.status == "ok" and not self.settled

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason


@dataclass
class StageCall:
    """What one batched backend call produced (for progress and the summary)."""

    stage: str
    requests: int
    tokens: int
    seconds: float


Observer = Callable[[StageCall], None]


class Run:
    """What every stage of a generation run needs: the engine, the constitution, the config,
    and who observes each batched call."""

    def __init__(self, backend: Backend, constitution: Constitution, config: GenerateConfig,
                 observe: Observer | None = None,
                 in_call: Callable[[str], ContextManager[Any]] | None = None) -> None:
        self.backend, self.constitution, self.config = backend, constitution, config
        self.observe = observe or (lambda call: None)
        # around each engine call of a stage: its bar hears of requests as they finish
        # (`cai.backends.finished`) and its clock keeps moving (`Progress.in_call`)
        self.in_call = in_call or (lambda stage: nullcontext())
        # Texts a critique or revision must not just echo: small models repeat the worked
        # examples. (Example *responses* are left out: a real refusal may resemble one.)
        self.examples = [t for ex in constitution.few_shot for t in (ex.critique, ex.revision)] \
            if config.few_shot else []

    def call(self, stage: str, conversations: list[list[dict[str, str]]],
             sampling: SamplingConfig) -> list[list[Generation]]:
        if not conversations:
            return []
        t0 = time.perf_counter()
        with self.in_call(stage):
            gens = self.backend.generate(conversations, sampling)
        seconds = time.perf_counter() - t0
        tokens = sum(len(g.token_ids) for gs in gens for g in gs)
        self.observe(StageCall(stage, len(conversations), tokens, seconds))
        return gens


def _fitting(run: Run, chains: list[Chain], convs: list[list[dict[str, str]]],
             max_tokens: int, what: str) -> tuple[list[Chain], list[list[dict[str, str]]]]:
    """Drop (with status skipped:too-long) chains whose prompt + max_tokens exceed the context:
    one over-long request would fail the whole batch in the engine."""
    keep_chains, keep_convs = [], []
    for chain, conv in zip(chains, convs):
        fit = context_fit(run.backend, conv, reserve=max_tokens)
        if not fit.ok:
            chain.fail("skipped:too-long", f"{what} prompt is {fit.tokens} tokens; with max_tokens "
                                           f"{max_tokens} it exceeds the context ({fit.limit})")
        else:
            keep_chains.append(chain)
            keep_convs.append(conv)
    return keep_chains, keep_convs


def respond(run: Run, chains: list[Chain]) -> None:
    """Stage 1: the model answers each prompt; `samples` answers per prompt in one request."""
    by_prompt: dict[str, list[Chain]] = {}
    for chain in chains:
        by_prompt.setdefault(chain.item.key, []).append(chain)
    groups = list(by_prompt.values())
    sampling = run.config.sampling("response")
    convs = [response_messages(run.constitution, g[0].item.messages) for g in groups]
    fitting = {id(c) for c in _fitting(run, [g[0] for g in groups], convs, sampling.max_tokens,
                                       "response")[0]}
    for g in groups:  # a group shares one prompt, so it fits or not as a whole
        if id(g[0]) not in fitting:
            for chain in g[1:]:
                chain.fail(g[0].status, g[0].reason)
    groups = [g for g in groups if id(g[0]) in fitting]
    convs = [response_messages(run.constitution, g[0].item.messages) for g in groups]
    t0 = time.perf_counter()
    gens = run.call("response", convs, sampling)
    seconds = time.perf_counter() - t0
    for group, outs in zip(groups, gens):
        for chain in group:
            g = outs[chain.sample_index]
            chain.response, chain.response_finish = g.text.strip(), g.finish_reason
            chain.response_tokens = len(g.token_ids)
            chain.current = chain.response
            chain.timings["response"] = seconds
            bad = problem(chain.response, finish_reason=g.finish_reason, max_tokens=sampling.max_tokens)
            if bad and bad.kind == "empty":
                chain.fail("degenerate:empty", "the initial response is empty")
            elif bad:
                chain.flags.append(f"response:{bad.kind}")


def field_tags(run: Run, chain: Chain) -> list[str]:
    """The prompt row's `principle_tags_field` (text or a list), as tags."""
    name = run.config.principle_tags_field
    value = chain.item.metadata.get(name) if name else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def route(run: Run, chains: list[Chain]) -> None:
    """Set each chain's route. auto: the row's tags field when it names a principle's tag,
    else the prompt scored against the principles' tags (one scoring call per chunk)."""
    mode = effective_route(run.config)
    known = {t for p in run.constitution.principles if p.weight > 0 for t in p.tags}
    to_score: dict[str, list[Chain]] = {}
    for ch in chains:
        tags = field_tags(run, ch)
        if mode == "random":
            ch.route = "random"
        elif mode == "tags" or known.intersection(tags):
            ch.route, ch.route_tags = "tags", tuple(tags)
        else:
            to_score.setdefault(ch.item.key, []).append(ch)
    if not to_score:
        return
    groups = list(to_score.values())
    t0 = time.perf_counter()
    routes = routing.route_prompts(run.backend, run.constitution,
                                   [routing.prompt_text(g[0].item.messages) for g in groups],
                                   run.config.route_threshold)
    seconds = time.perf_counter() - t0
    run.observe(StageCall("route", len(groups), 0, seconds))
    for group, r in zip(groups, routes):
        for ch in group:
            ch.route, ch.route_tags, ch.route_score = r.label, r.tags, r.score
            ch.timings["route"] = seconds
            if r.label == routing.BENIGN and not run.config.revise_benign:
                # The paper revises red-team answers only; rewriting a good answer to a benign
                # prompt under some principle is how revisions get worse (README).
                ch.settled, ch.status = True, "ok:unchanged"
                ch.reason = (f"routed benign (best harm principle {r.score:.2f} nats < "
                             f"{run.config.route_threshold}): kept as answered")


def principle_for(run: Run, chain: Chain, round_index: int) -> Principle:
    if chain.route not in ("", "random", "tags", routing.BENIGN):
        return run.constitution.principle(chain.route)  # routed to this one principle
    return sample_principle(run.constitution, run.config.seed, f"{chain.id}/round{round_index}",
                            tags=chain.route_tags)


def draw(run: Run, chains: list[Chain], round_index: int) -> None:
    """Each active chain's principle for this round."""
    for ch in chains:
        if ch.active:
            p = principle_for(run, ch, round_index)
            ch.rounds.append(Round(round=round_index + 1, principle_id=p.id))


def judge(run: Run, chains: list[Chain], round_index: int) -> None:
    """The no-change verdict on each active chain's latest answer under this round's
    principle; at P(no change) >= unchanged_threshold the chain stops revising."""
    threshold = run.config.unchanged_threshold
    active = [ch for ch in chains if ch.active]
    if threshold is None or not active:
        return
    c = run.constitution
    t0 = time.perf_counter()
    probs = verdict.judge(run.backend, c, [(c.principle(ch.rounds[-1].principle_id),
                                            ch.item.messages, ch.current) for ch in active])
    seconds = time.perf_counter() - t0
    run.observe(StageCall("verdict", len(active), 0, seconds))
    for ch, p in zip(active, probs):
        ch.rounds[-1].p_no_change = p
        ch.timings["verdict"] = ch.timings.get("verdict", 0.0) + seconds
        if p >= threshold:
            ch.settled = True
            if round_index == 0:
                ch.status = "ok:unchanged"
                ch.reason = (f"round 1: P(no change needed) {p:.2f} >= {threshold} under "
                             f"{ch.rounds[-1].principle_id}")


def critique(run: Run, chains: list[Chain], round_index: int) -> None:
    """Stage 2: under a sampled principle, the model critiques its latest answer."""
    c, cfg = run.constitution, run.config
    sampling = cfg.sampling("critique", round_index=round_index)
    active = [ch for ch in chains if ch.active]
    convs = [critique_messages(c, c.principle(ch.rounds[-1].principle_id), ch.item.messages,
                               ch.current, cfg.few_shot) for ch in active]
    active, convs = _fitting(run, active, convs, sampling.max_tokens, f"round {round_index + 1} critique")
    t0 = time.perf_counter()
    gens = run.call("critique", convs, sampling)
    seconds = time.perf_counter() - t0
    for ch, outs in zip(active, gens):
        g = outs[0]
        text = clean_output(g.text)
        this = ch.rounds[-1]
        this.critique, this.critique_finish, this.critique_tokens = \
            text, g.finish_reason, len(g.token_ids)
        ch.timings["critique"] = ch.timings.get("critique", 0.0) + seconds
        bad = problem(text, finish_reason=g.finish_reason, examples=run.examples)
        if bad and bad.kind == "empty":
            ch.fail("degenerate:empty", f"round {round_index + 1} critique is empty")
        elif bad:
            ch.flags.append(f"critique{round_index + 1}:{bad.kind}")


def revise(run: Run, chains: list[Chain], round_index: int) -> None:
    """Stage 3: the model rewrites its answer in light of the critique (one request per
    chain, `revision_candidates` samples each)."""
    c, cfg = run.constitution, run.config
    sampling = cfg.sampling("revision", round_index=round_index)
    active = [ch for ch in chains if ch.active]
    convs = [revision_messages(c, c.principle(ch.rounds[-1].principle_id), ch.item.messages,
                               ch.current, ch.rounds[-1].critique, cfg.few_shot) for ch in active]
    active, convs = _fitting(run, active, convs, sampling.max_tokens, f"round {round_index + 1} revision")
    t0 = time.perf_counter()
    gens = run.call("revision", convs, sampling)
    seconds = time.perf_counter() - t0
    candidates: list[tuple[Chain, list[list[Any]]]] = []
    for ch, outs in zip(active, gens):
        # With revision_candidates > 1: keep the first candidate that passes the checks
        # (rejection sampling); if none does, the first one and its problem are recorded.
        checked = []
        for g in outs:
            text = clean_output(g.text)
            bad = problem(text, finish_reason=g.finish_reason, original=ch.current,
                          max_tokens=sampling.max_tokens, examples=run.examples,
                          critique=ch.rounds[-1].critique)
            checked.append([g, text, bad, None])
        candidates.append((ch, checked))
    check_relevance(run, candidates)
    for ch, checked in candidates:
        pick = next((i for i, (_, _, bad, _) in enumerate(checked) if bad is None), 0)
        g, text, bad, pmi = checked[pick]
        this = ch.rounds[-1]
        this.revision, this.revision_finish, this.revision_tokens = \
            text, g.finish_reason, len(g.token_ids)
        this.revision_candidate = pick
        this.rejected_candidates = [b.kind for _, _, b, _ in checked[:pick]]
        this.revision_relevance = pmi
        ch.timings["revision"] = ch.timings.get("revision", 0.0) + seconds
        if bad:
            ch.fail(f"degenerate:{bad.kind}", f"round {round_index + 1} revision: {bad.reason}")
        else:
            ch.current = text


def check_relevance(run: Run, candidates: list[tuple[Chain, list[list[Any]]]]) -> None:
    """Mark candidates that passed the text checks but do not answer their prompt
    (degenerate:unresponsive): meta-commentary about "the response", or a PMI with the
    prompt (against another prompt of the chunk) at or below `min_relevance`.

    Only the candidate that would be kept is scored: each pass scores, in one call, every
    chain's first candidate still standing; a chain goes on to its next candidate only when
    that one fails. The kept candidate is the same as if all were scored, for a fraction of
    the scoring (prompt log-probs over the whole vocabulary are the expensive part)."""
    threshold = run.config.min_relevance
    if threshold is None:
        return
    for ch, checked in candidates:
        for cand in checked:
            if cand[2] is None and (meta := meta_commentary(cand[1])):
                cand[2] = Problem("unresponsive", f"meta-commentary: {meta}")
    prompts = relevance.distinct_prompts([ch.item.messages for ch, _ in candidates])
    while True:
        todo = []
        for ch, checked in candidates:
            first = next((cand for cand in checked if cand[2] is None), None)
            if first is not None and first[3] is None:
                todo.append((ch, first))
        if not todo:
            return
        t0 = time.perf_counter()
        scores = relevance.pmi(run.backend, [(ch.item.messages,
                                              relevance.shuffled(prompts, ch.item.messages),
                                              cand[1]) for ch, cand in todo])
        run.observe(StageCall("relevance", len(todo), 0, time.perf_counter() - t0))
        for (ch, cand), s in zip(todo, scores):
            cand[3] = s
            if s <= threshold:
                cand[2] = Problem("unresponsive", f"PMI with its prompt {s:.3f} nats/token <= "
                                                  f"{threshold} (no longer addresses the prompt)")


def run_chains(run: Run, chains: list[Chain], rounds: int) -> list[Chain]:
    """The whole loop over one chunk of chains, each scoring or generation step one
    batched call."""
    respond(run, chains)
    route(run, [ch for ch in chains if ch.active])
    for r in range(rounds):
        draw(run, chains, r)
        judge(run, chains, r)
        critique(run, chains, r)
        revise(run, chains, r)
    return chains
