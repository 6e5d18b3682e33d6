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
from dataclasses import dataclass, field
from typing import Any, Callable

from cai.backends import Backend, Generation, SamplingConfig
from cai.backends.text import encode
from cai.constitution import Constitution, Principle, sample_principle
from cai.generate import relevance, routing, verdict
from cai.generate.config import GenerateConfig, effective_route
from cai.generate.inputs import PromptItem
from cai.generate.quality import meta_commentary, problem
from cai.prompting import clean_output, critique_messages, response_messages, revision_messages


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
    rounds: list[dict[str, Any]] = field(default_factory=list)
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


class Context:
    """What every stage needs: the engine, the constitution, the config, and how long a
    prompt may be."""

    def __init__(self, backend: Backend, constitution: Constitution, config: GenerateConfig,
                 observe: Observer | None = None) -> None:
        self.backend, self.constitution, self.config = backend, constitution, config
        self.observe = observe or (lambda call: None)
        self.context_len = backend.context_length()
        # Texts a critique or revision must not just echo: small models repeat the worked
        # examples. (Example *responses* are left out: a real refusal may resemble one.)
        self.examples = [t for ex in constitution.few_shot for t in (ex.critique, ex.revision)] \
            if config.few_shot else []

    def call(self, stage: str, conversations: list[list[dict[str, str]]],
             sampling: SamplingConfig) -> list[list[Generation]]:
        if not conversations:
            return []
        t0 = time.perf_counter()
        gens = self.backend.generate(conversations, sampling)
        seconds = time.perf_counter() - t0
        tokens = sum(len(g.token_ids) for gs in gens for g in gs)
        self.observe(StageCall(stage, len(conversations), tokens, seconds))
        return gens


def _fitting(ctx: Context, chains: list[Chain], convs: list[list[dict[str, str]]],
             max_tokens: int, what: str) -> tuple[list[Chain], list[list[dict[str, str]]]]:
    """Drop (with status skipped:too-long) chains whose prompt + max_tokens exceed the context:
    one over-long request would fail the whole batch in the engine."""
    tokenizer = getattr(ctx.backend, "tokenizer", None)
    if ctx.context_len is None or tokenizer is None:
        return chains, convs
    keep_chains, keep_convs = [], []
    for chain, conv in zip(chains, convs):
        n = len(encode(tokenizer, ctx.backend.render_chat(conv)))
        if n + max_tokens > ctx.context_len:
            chain.fail("skipped:too-long", f"{what} prompt is {n} tokens; with max_tokens "
                                           f"{max_tokens} it exceeds the context ({ctx.context_len})")
        else:
            keep_chains.append(chain)
            keep_convs.append(conv)
    return keep_chains, keep_convs


def respond(ctx: Context, chains: list[Chain]) -> None:
    """Stage 1: the model answers each prompt; `samples` answers per prompt in one request."""
    by_prompt: dict[str, list[Chain]] = {}
    for chain in chains:
        by_prompt.setdefault(chain.item.key, []).append(chain)
    groups = list(by_prompt.values())
    sampling = ctx.config.sampling("response")
    convs = [response_messages(ctx.constitution, g[0].item.messages) for g in groups]
    fitting = {id(c) for c in _fitting(ctx, [g[0] for g in groups], convs, sampling.max_tokens,
                                       "response")[0]}
    for g in groups:  # a group shares one prompt, so it fits or not as a whole
        if id(g[0]) not in fitting:
            for chain in g[1:]:
                chain.fail(g[0].status, g[0].reason)
    groups = [g for g in groups if id(g[0]) in fitting]
    convs = [response_messages(ctx.constitution, g[0].item.messages) for g in groups]
    t0 = time.perf_counter()
    gens = ctx.call("response", convs, sampling)
    seconds = time.perf_counter() - t0
    for group, outs in zip(groups, gens):
        for chain in group:
            g = outs[chain.sample_index]
            chain.response, chain.response_finish = g.text.strip(), g.finish_reason
            chain.response_tokens = len(g.token_ids)
            chain.current = chain.response
            chain.timings["response"] = seconds
            bad = problem(chain.response, finish_reason=g.finish_reason, max_tokens=sampling.max_tokens)
            if bad and bad[0] == "empty":
                chain.fail("degenerate:empty", "the initial response is empty")
            elif bad:
                chain.flags.append(f"response:{bad[0]}")


def field_tags(ctx: Context, chain: Chain) -> list[str]:
    """The prompt row's `principle_tags_field` (text or a list), as tags."""
    name = ctx.config.principle_tags_field
    value = chain.item.metadata.get(name) if name else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def route(ctx: Context, chains: list[Chain]) -> None:
    """Set each chain's route. auto: the row's tags field when it names a principle's tag,
    else the prompt scored against the principles' tags (one scoring call per chunk)."""
    mode = effective_route(ctx.config)
    known = {t for p in ctx.constitution.principles if p.weight > 0 for t in p.tags}
    to_score: dict[str, list[Chain]] = {}
    for ch in chains:
        tags = field_tags(ctx, ch)
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
    routes = routing.route_prompts(ctx.backend, ctx.constitution,
                                   [routing.prompt_text(g[0].item.messages) for g in groups],
                                   ctx.config.route_threshold)
    seconds = time.perf_counter() - t0
    ctx.observe(StageCall("route", len(groups), 0, seconds))
    for group, r in zip(groups, routes):
        for ch in group:
            ch.route, ch.route_tags, ch.route_score = r.label, r.tags, r.score
            ch.timings["route"] = seconds


def principle_for(ctx: Context, chain: Chain, round_index: int) -> Principle:
    if chain.route not in ("", "random", "tags", routing.BENIGN):
        return ctx.constitution.principle(chain.route)  # routed to this one principle
    return sample_principle(ctx.constitution, ctx.config.seed, f"{chain.id}/round{round_index}",
                            tags=chain.route_tags)


def draw(ctx: Context, chains: list[Chain], round_index: int) -> None:
    """Each active chain's principle for this round."""
    for ch in chains:
        if ch.active:
            p = principle_for(ctx, ch, round_index)
            ch.rounds.append({"round": round_index + 1, "principle_id": p.id})


def judge(ctx: Context, chains: list[Chain], round_index: int) -> None:
    """The no-change verdict on each active chain's latest answer under this round's
    principle; at P(no change) >= unchanged_threshold the chain stops revising."""
    threshold = ctx.config.unchanged_threshold
    active = [ch for ch in chains if ch.active]
    if threshold is None or not active:
        return
    c = ctx.constitution
    t0 = time.perf_counter()
    probs = verdict.judge(ctx.backend, c, [(c.principle(ch.rounds[-1]["principle_id"]),
                                            ch.item.messages, ch.current) for ch in active])
    seconds = time.perf_counter() - t0
    ctx.observe(StageCall("verdict", len(active), 0, seconds))
    for ch, p in zip(active, probs):
        ch.rounds[-1]["p_no_change"] = p
        ch.timings["verdict"] = ch.timings.get("verdict", 0.0) + seconds
        if p >= threshold:
            ch.settled = True
            if round_index == 0:
                ch.status = "ok:unchanged"
                ch.reason = (f"round 1: P(no change needed) {p:.2f} >= {threshold} under "
                             f"{ch.rounds[-1]['principle_id']}")


def critique(ctx: Context, chains: list[Chain], round_index: int) -> None:
    """Stage 2: under a sampled principle, the model critiques its latest answer."""
    c, cfg = ctx.constitution, ctx.config
    sampling = cfg.sampling("critique", round_index=round_index)
    active = [ch for ch in chains if ch.active]
    convs = [critique_messages(c, c.principle(ch.rounds[-1]["principle_id"]), ch.item.messages,
                               ch.current, cfg.few_shot) for ch in active]
    active, convs = _fitting(ctx, active, convs, sampling.max_tokens, f"round {round_index + 1} critique")
    t0 = time.perf_counter()
    gens = ctx.call("critique", convs, sampling)
    seconds = time.perf_counter() - t0
    for ch, outs in zip(active, gens):
        g = outs[0]
        text = clean_output(g.text)
        ch.rounds[-1].update(critique=text, critique_finish=g.finish_reason,
                             critique_tokens=len(g.token_ids))
        ch.timings["critique"] = ch.timings.get("critique", 0.0) + seconds
        bad = problem(text, finish_reason=g.finish_reason, examples=ctx.examples)
        if bad and bad[0] == "empty":
            ch.fail("degenerate:empty", f"round {round_index + 1} critique is empty")
        elif bad:
            ch.flags.append(f"critique{round_index + 1}:{bad[0]}")


def revise(ctx: Context, chains: list[Chain], round_index: int) -> None:
    """Stage 3: the model rewrites its answer in light of the critique (one request per
    chain, `revision_candidates` samples each)."""
    c, cfg = ctx.constitution, ctx.config
    sampling = cfg.sampling("revision", round_index=round_index)
    active = [ch for ch in chains if ch.active]
    convs = [revision_messages(c, c.principle(ch.rounds[-1]["principle_id"]), ch.item.messages,
                               ch.current, ch.rounds[-1]["critique"], cfg.few_shot) for ch in active]
    active, convs = _fitting(ctx, active, convs, sampling.max_tokens, f"round {round_index + 1} revision")
    t0 = time.perf_counter()
    gens = ctx.call("revision", convs, sampling)
    seconds = time.perf_counter() - t0
    candidates: list[tuple[Chain, list[list[Any]]]] = []
    for ch, outs in zip(active, gens):
        # With revision_candidates > 1: keep the first candidate that passes the checks
        # (rejection sampling); if none does, the first one and its problem are recorded.
        checked = []
        for g in outs:
            text = clean_output(g.text)
            bad = problem(text, finish_reason=g.finish_reason, original=ch.current,
                          max_tokens=sampling.max_tokens, examples=ctx.examples,
                          critique=ch.rounds[-1]["critique"])
            checked.append([g, text, bad, None])
        candidates.append((ch, checked))
    check_relevance(ctx, candidates)
    for ch, checked in candidates:
        pick = next((i for i, (_, _, bad, _) in enumerate(checked) if bad is None), 0)
        g, text, bad, pmi = checked[pick]
        ch.rounds[-1].update(revision=text, revision_finish=g.finish_reason,
                             revision_tokens=len(g.token_ids), revision_candidate=pick,
                             rejected_candidates=[b[0] for _, _, b, _ in checked[:pick]],
                             revision_relevance=pmi)
        ch.timings["revision"] = ch.timings.get("revision", 0.0) + seconds
        if bad:
            ch.fail(f"degenerate:{bad[0]}", f"round {round_index + 1} revision: {bad[1]}")
        else:
            ch.current = text


def check_relevance(ctx: Context, candidates: list[tuple[Chain, list[list[Any]]]]) -> None:
    """Mark candidates that passed the text checks but do not answer their prompt
    (degenerate:unresponsive): meta-commentary about "the response", or a PMI with the
    prompt (against another prompt of the chunk) at or below `min_relevance`. One scoring
    call for every such candidate of the chunk."""
    threshold = ctx.config.min_relevance
    if threshold is None:
        return
    todo = []
    for ch, checked in candidates:
        for cand in checked:
            if cand[2] is None:
                meta = meta_commentary(cand[1])
                if meta:
                    cand[2] = ("unresponsive", f"meta-commentary: {meta}")
                else:
                    todo.append((ch, cand))
    if not todo:
        return
    prompts = relevance.distinct_prompts([ch.item.messages for ch, _ in candidates])
    t0 = time.perf_counter()
    scores = relevance.pmi(ctx.backend, [(ch.item.messages, relevance.shuffled(prompts, ch.item.messages),
                                          cand[1]) for ch, cand in todo])
    ctx.observe(StageCall("relevance", len(todo), 0, time.perf_counter() - t0))
    for (ch, cand), s in zip(todo, scores):
        cand[3] = s
        if s <= threshold:
            cand[2] = ("unresponsive", f"PMI with its prompt {s:.3f} nats/token <= "
                                       f"{threshold} (no longer addresses the prompt)")


def run_chains(ctx: Context, chains: list[Chain], rounds: int) -> list[Chain]:
    """The whole loop over one chunk of chains, each scoring or generation step one
    batched call."""
    respond(ctx, chains)
    route(ctx, [ch for ch in chains if ch.active])
    for r in range(rounds):
        draw(ctx, chains, r)
        judge(ctx, chains, r)
        critique(ctx, chains, r)
        revise(ctx, chains, r)
    return chains
