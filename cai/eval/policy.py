"""`cai eval policy`: a trained policy against its reference on held-out prompts.

    summary = run_eval_policy(EvalPolicyConfig(model="out/ppo", reference="out/sft",
                                               prompts=["red_team_eval.jsonl", "helpful_eval.jsonl"],
                                               reward="out/rm", out="out/eval"))

Steps (each model it loads itself is loaded once, one at a time, so two vLLM engines it
starts never coexist; `cai run` passes the policy's and the reference's engines from its pool):
1. the policy answers every prompt (greedy by default: temperature 0, fixed seed) and, for
   the KL estimate, samples once more at temperature 1 (top-p 1, no top-k);
2. the reference (if given) answers the same prompts with the same settings; it is also the
   AI-feedback judge unless `judge_model` names another model;
3. every response gets a refusal verdict (`cai.eval.refusal.classify`);
4. rewards from the reward model (if given) for both sides: win rate and reward-length
   correlation;
5. the judge compares policy vs reference per prompt with the constitution, in both orders
   (`cai.label.label_pairs`): win rate and mean P(policy better);
6. KL(policy || reference) from transformers log-probs of both models on the T=1 samples.

Writes OUT/eval.json (the summary) and OUT/samples.jsonl (one row per prompt).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import Field, field_validator

from cai.config import EngineConfig, progress_bar, say

from cai import stats
from cai.eval.prompts import EvalPrompt, load_eval_prompts
from cai.eval.refusal import LABELS, SAFE, classify

EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.jsonl"


class EvalPolicyConfig(EngineConfig):
    """`out` holds eval.json and samples.jsonl; `backend` and `backend_options` load each
    model in turn; `max_tokens` is the length of each answer."""

    model: str = Field(description="the policy: registry name, model directory or hub id")
    reference: str | None = Field(None, description="the model it is compared with (SFT or base)")
    prompts: list[str] = Field(default_factory=list,
                               description="prompt files; each row's kind from its kind/category")
    harmful: list[str] = Field(default_factory=list, description="prompt files, all harmful")
    benign: list[str] = Field(default_factory=list, description="prompt files, all benign")
    limit: int | None = Field(None, ge=1, description="first N prompts of each file")
    reward: str | None = Field(None, description="a `cai train rm` directory")
    constitution: str | None = Field("harmless", description="judge's constitution; none: no judge")
    judge_model: str | None = Field(None, description="AI-feedback judge (default: the reference)")
    judge_principles: int = Field(1, ge=1, description="K principles per comparison")
    max_tokens: int = Field(128, ge=1, description="tokens per answer")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    kl: bool = Field(True, description="estimate KL to the reference (needs local weights)")
    kl_max_tokens: int | None = Field(None, ge=1, description="T=1 sample length (default max_tokens)")
    batch_size: int = Field(8, ge=1, description="transformers scoring batch (rewards, log-probs)")
    relevance: bool = Field(True, description="score whether each response addresses its prompt: "
                            "per-token PMI of the response with its own prompt against another "
                            "eval prompt, under the reference model (else the policy). Catches "
                            "generic, evasive answers that no refusal pattern matches")
    relevance_threshold: float = Field(0.0, description="PMI (nats/token) at or below which a "
                                       "response does not address its prompt")
    report: str | None = Field(None, description="afterwards, (re)build this run directory's "
                                                 "report.html and report.md (`cai eval report`)")

    @field_validator("constitution", mode="before")
    @classmethod
    def _none(cls, v: object) -> object:
        # "none" from a flag or YAML: no judge
        return None if isinstance(v, str) and v.strip().lower() in ("none", "off", "null") else v

    def files(self) -> list[tuple[str, str | None]]:
        return ([(p, None) for p in self.prompts] + [(p, "harmful") for p in self.harmful]
                + [(p, "benign") for p in self.benign])


def _outcome(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _side_summary(prompts: list[EvalPrompt], verdicts: list[str], lengths: list[int],
                  rewards: list[float] | None, pmi: list[float] | None = None,
                  threshold: float = 0.0) -> dict[str, Any]:
    by_kind = {k: [v for p, v in zip(prompts, verdicts) if p.kind == k] for k in ("harmful", "benign")}
    out: dict[str, Any] = {
        "harmful_safe": stats.proportion(sum(v in SAFE for v in by_kind["harmful"]),
                                         len(by_kind["harmful"])),
        "benign_over_refusal": stats.proportion(sum(v in SAFE for v in by_kind["benign"]),
                                                len(by_kind["benign"])),
        "labels": {k: {lab: Counter(vs)[lab] for lab in LABELS} for k, vs in by_kind.items()},
        "length_tokens": stats.describe([float(n) for n in lengths]),
    }
    if pmi is not None:
        # an answer that is as likely after another prompt as after its own addresses neither
        out["addresses_prompt"] = {
            k: stats.proportion(sum(x > threshold for p, x in zip(prompts, pmi) if p.kind == k),
                                sum(p.kind == k for p in prompts))
            for k in ("harmful", "benign")}
        out["relevance_pmi"] = stats.describe(pmi)
    if rewards is not None:
        out["reward"] = stats.describe(rewards)
        out["reward_length"] = {"pearson": stats.pearson(rewards, [float(n) for n in lengths]),
                                "spearman": stats.spearman(rewards, [float(n) for n in lengths])}
    return out


class _Backends:
    """Loads each model's backend when first needed and closes what it loaded."""

    def __init__(self, config: EvalPolicyConfig) -> None:
        self.config = config
        self.opened: list[Any] = []

    def load(self, model: str):
        from cai.cluster.backend import load_engine  # on Ray when config.ray is set

        b = load_engine(self.config, model)
        self.opened.append(b)
        return b

    def close(self, b) -> None:
        if b in self.opened:
            self.opened.remove(b)
            b.close()

    def close_all(self) -> None:
        for b in list(self.opened):
            self.close(b)


def _generate(backend, prompts: list[EvalPrompt], sampling) -> list[Any]:
    return [g[0] for g in backend.generate([p.messages for p in prompts], sampling)]


class _Phases:
    """One bar over the eval's phases (loads, answers, judge, relevance, rewards, KL): each
    is one long engine or model call, so the bar ticks through it (elapsed, then ETA) and
    names it; each phase's seconds are added to `timings[key]`."""

    def __init__(self, names: list[str], progress: Callable[..., Any], disable: bool,
                 timings: dict[str, float]) -> None:
        self.bar = progress(total=len(names), desc="eval", unit="phase", disable=disable)
        self.timings = timings

    @contextmanager
    def __call__(self, name: str, key: str) -> Iterator[None]:
        from cai.progress import ticking

        self.bar.set_postfix_str(name, refresh=True)
        t = time.perf_counter()
        with ticking(self.bar):
            yield
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _phase_names(config: EvalPolicyConfig, own_policy: bool, want_kl: bool) -> list[str]:
    """The phases `run_eval_policy` goes through with this config, in order."""
    ref = config.reference is not None
    names = ["load policy"] if own_policy else []
    names += ["policy answers"] + (["KL samples"] if want_kl else [])
    if config.relevance and not ref:
        names.append("relevance")
    if ref:
        names += ["load reference", "reference answers"]
        names += ["judge"] if config.constitution else []
        names += ["relevance"] if config.relevance else []
    names += ["reward model"] if config.reward else []
    return names + (["KL log-probs"] if want_kl else [])


def run_eval_policy(config: EvalPolicyConfig, *, backend=None, log: Callable[[str], None] = say,
                    progress: Callable[..., Any] = progress_bar, reference_backend=None,
                    judge_backend=None) -> dict[str, Any]:
    """Evaluate; returns the summary written to OUT/eval.json (and, with `config.report`,
    rebuilds that run directory's report). Backends passed in (the policy's as `backend`)
    are used as given (and not closed); the others are loaded from the config and closed."""
    from cai.backends import SamplingConfig
    from cai.io import atomic_write_json, atomic_write_jsonl

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    files = config.files()
    if not files:
        raise ValueError("no prompt files: give --prompts, --harmful or --benign")
    prompts, rejects = load_eval_prompts(files, config.limit)
    if not prompts:
        raise ValueError("no usable prompts in " + ", ".join(p for p, _ in files))
    n_h = sum(p.kind == "harmful" for p in prompts)
    log(f"{len(prompts)} prompts ({n_h} harmful, {len(prompts) - n_h} benign)"
        + (f"; {len(rejects)} rows rejected" if rejects else ""))
    sampling = (SamplingConfig(temperature=config.temperature, top_p=1.0,
                               max_tokens=config.max_tokens, seed=config.seed),
                SamplingConfig(temperature=1.0, top_p=1.0, seed=config.seed,
                               max_tokens=config.kl_max_tokens or config.max_tokens))
    want_kl = config.kl and config.reference is not None
    phase = _Phases(_phase_names(config, backend is None, want_kl), progress,
                    not config.progress, timings)
    try:
        side = _answer(config, prompts, sampling, want_kl, phase, log, backend,
                       reference_backend, judge_backend)
        pol_gens, ref_gens = side["policy"], side["reference"]
        pol_texts = [g.text for g in pol_gens]
        ref_texts = [g.text for g in ref_gens] if ref_gens else None
        pol_rewards = ref_rewards = None
        if config.reward:
            with phase("reward model", "reward_s"):
                pol_rewards, ref_rewards = _rewards(config, prompts, pol_texts, ref_texts, log,
                                                    progress)
        kl = None
        if want_kl:
            with phase("KL log-probs", "kl_s"):
                kl = _kl(config, prompts, side["kl"], side["lm"], side["tokenizer"], log,
                         progress)
    finally:
        phase.close()
    pol_verdicts = [classify(r, p.text) for p, r in zip(prompts, pol_texts)]
    ref_verdicts = [classify(r, p.text) for p, r in zip(prompts, ref_texts)] if ref_texts else None

    summary = _summarise(config, prompts, rejects, pol_gens, ref_gens, pol_verdicts, ref_verdicts,
                         pol_rewards, ref_rewards, side["judge"], kl, side["pmi"])
    summary["engine_precision"] = engine_precision_line(side["precision"])
    timings["total_s"] = time.perf_counter() - t0
    summary["timings"] = {k: round(v, 2) for k, v in timings.items()}

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / SAMPLES_FILE, _samples(prompts, pol_gens, ref_gens, pol_verdicts,
                                                    ref_verdicts, pol_rewards, ref_rewards,
                                                    side["judge"], kl, side["pmi"]))
    atomic_write_json(out / EVAL_FILE, summary)
    if config.report is not None:
        from cai.eval.report import write_report

        paths = write_report(Path(config.report))
        summary = {**summary, "report": {k: str(v) for k, v in paths.items()}}
    return summary


def _answer(config: EvalPolicyConfig, prompts: list[EvalPrompt], sampling: tuple, want_kl: bool,
            phase: _Phases, log: Callable[[str], None], backend, reference_backend,
            judge_backend) -> dict[str, Any]:
    """The engine phases: both sides' answers, the KL samples, the judge's verdicts and the
    relevance scores, each model loaded once and closed before the next is loaded."""
    greedy, unbiased = sampling
    out: dict[str, Any] = {"reference": None, "judge": None, "kl": None}
    pol_pmi = ref_pmi = None
    owned = _Backends(config)
    try:
        if backend is None:
            with phase("load policy", "policy_load_s"):
                backend = owned.load(config.model)
        policy = backend
        log(f"policy {config.model}: generating {len(prompts)} responses")
        with phase("policy answers", "policy_generate_s"):
            out["policy"] = _generate(policy, prompts, greedy)
        if want_kl:
            with phase("KL samples", "kl_samples_s"):
                out["kl"] = _generate(policy, prompts, unbiased)
        out["tokenizer"], out["lm"] = policy.tokenizer, getattr(policy, "lm", None)
        out["precision"] = {"policy": getattr(policy, "precision", None)}
        pol_texts = [g.text for g in out["policy"]]
        if config.relevance and config.reference is None:
            with phase("relevance", "relevance_s"):
                pol_pmi = _relevance(policy, prompts, pol_texts, log)
        owned.close(policy)

        if config.reference is not None:
            ref = reference_backend
            if ref is None:
                with phase("load reference", "reference_load_s"):
                    ref = owned.load(config.reference)
            out["precision"]["reference"] = getattr(ref, "precision", None)
            log(f"reference {config.reference}: generating {len(prompts)} responses")
            with phase("reference answers", "reference_generate_s"):
                out["reference"] = _generate(ref, prompts, greedy)
            ref_texts = [g.text for g in out["reference"]]
            if config.constitution:
                with phase("judge", "judge_s"):
                    judge = judge_backend or (ref if config.judge_model in (None, config.reference)
                                              else owned.load(config.judge_model))
                    out["judge"] = _judge(judge, config, prompts, pol_texts, ref_texts, log)
            if config.relevance:
                # one scorer for both sides, so before and after are comparable
                with phase("relevance", "relevance_s"):
                    pol_pmi = _relevance(ref, prompts, pol_texts, log)
                    ref_pmi = _relevance(ref, prompts, ref_texts, log)
            owned.close(ref)
    finally:
        owned.close_all()
    out["pmi"] = (pol_pmi, ref_pmi)
    return out


def engine_precision_line(by_side: dict[str, str | None]) -> str | None:
    """The engines' precision for the summary: once when every engine states the same, else
    per side ("policy fp32: ... | reference bf16: ..."); None when none says."""
    known = {k: v for k, v in by_side.items() if v}
    if not known:
        return None
    if len(set(known.values())) == 1 and len(known) == len(by_side):
        return next(iter(known.values()))
    return " | ".join(f"{k} {v}" for k, v in known.items())


def _rewards(config: EvalPolicyConfig, prompts: list[EvalPrompt], pol_texts: list[str],
             ref_texts: list[str] | None, log: Callable[[str], None],
             progress: Callable[..., Any]) -> tuple[list[float], list[float] | None]:
    """Each side's rewards from the reward model, both sides in one scoring pass."""
    log(f"reward model {config.reward}: scoring")
    texts = pol_texts + (ref_texts or [])
    msgs = [p.messages for p in prompts] * (2 if ref_texts else 1)
    bar = progress(total=len(texts), desc="reward model", unit="seq",
                   disable=not config.progress, leave=False)
    try:
        scores = reward_scores_fn()(config.reward, msgs, texts, batch_size=config.batch_size,
                                    on_batch=bar.update)
    finally:
        bar.close()
    return scores[:len(prompts)], (scores[len(prompts):] if ref_texts else None)


def _relevance(scorer, prompts: list[EvalPrompt], texts: list[str],
               say: Callable[[str], None]) -> list[float] | None:
    """Each response's per-token PMI with its own prompt against the next distinct eval
    prompt (`cai.generate.relevance`), or None when the scorer cannot score chat text (a
    server named without its tokenizer)."""
    from cai.generate import relevance

    others = relevance.distinct_prompts([p.messages for p in prompts])
    try:
        return relevance.pmi(scorer, [(p.messages, relevance.shuffled(others, p.messages), t)
                                      for p, t in zip(prompts, texts)])
    except (ValueError, NotImplementedError) as e:
        say(f"relevance: not scored ({e})")
        return None


def reward_scores_fn():
    """The reward scorer in use (one place to swap it)."""
    from cai.eval.scoring import reward_scores

    return reward_scores


def _judge(judge, config: EvalPolicyConfig, prompts: list[EvalPrompt], pol: list[str],
           ref: list[str], say) -> list[float | None]:
    """P(policy better than reference) per prompt from the AI-feedback judge, both orders
    (label_pairs); 0.5 where the two responses are the same, None where a pair could not be
    judged (an empty answer, or too long for the judge's context)."""
    from cai.constitution import load_constitution
    from cai.label import LabelConfig, Pair, fitting_pairs, label_pairs, pair_key
    from cai.label.inputs import normalize

    c = load_constitution(config.constitution)
    cfg = LabelConfig(principles=config.judge_principles, seed=config.seed)
    out: list[float | None] = [None] * len(prompts)
    pairs = []
    for i, (p, a, b) in enumerate(zip(prompts, pol, ref)):
        if normalize(a) == normalize(b):
            out[i] = 0.5
        elif a.strip() and b.strip():
            pairs.append(Pair(key=pair_key(p.messages, a, b), prompt=p.messages, first=a,
                              second=b, input={"index": i}))
    pairs, too_long = fitting_pairs(judge, c, pairs, cfg)
    if too_long:
        say(f"judge: {len(too_long)} pairs too long for its context, not judged")
    say(f"judge ({c.name}, K={cfg.principles}, both orders): {len(pairs)} pairs")
    for lab in label_pairs(judge, c, pairs, cfg, progress=config.progress):
        out[lab.pair.input["index"]] = lab.p_first
    return out


def _kl(config, prompts, gens, policy_lm, policy_tokenizer, say, progress) -> dict[str, Any]:
    """KL(policy || reference) on the T=1 samples: mean over prompts of the summed log-ratio."""
    from cai.backends.text import encode, render_chat
    from cai.eval.scoring import kl_to_reference, load_causal_lm

    if policy_lm is None or policy_tokenizer is None:
        policy_lm, policy_tokenizer = load_causal_lm(config.model)
    ref_lm, ref_tok = load_causal_lm(config.reference, device=str(next(policy_lm.parameters()).device))
    if ref_tok.get_vocab() != policy_tokenizer.get_vocab():
        raise ValueError(f"KL needs the policy and the reference to share a tokenizer; "
                         f"{config.model} and {config.reference} do not")
    eos = policy_tokenizer.eos_token_id
    prompt_ids = [encode(policy_tokenizer, render_chat(policy_tokenizer, p.messages)) for p in prompts]
    # A sample that ended by EOS chose EOS too: its log-ratio is part of the sequence's.
    resp_ids = [list(g.token_ids) + ([eos] if g.finish_reason == "stop" and eos is not None
                                     and (not g.token_ids or g.token_ids[-1] != eos) else [])
                for g in gens]
    say(f"KL: log-probs of {len(prompts)} T=1 samples under the policy and the reference")
    pad = policy_tokenizer.pad_token_id if policy_tokenizer.pad_token_id is not None else 0
    bar = progress(total=2 * len(prompts), desc="KL log-probs", unit="seq",
                   disable=not config.progress, leave=False)
    try:
        per = kl_to_reference(policy_lm, ref_lm, prompt_ids, resp_ids, batch_size=config.batch_size,
                              pad_id=pad, on_batch=bar.update)
    finally:
        bar.close()
    d = stats.describe(per)
    sd = stats.sample_sd(per)
    return {"mean": d["mean"], "se": sd / math.sqrt(len(per)) if sd is not None else None,
            "median": d["median"], "n": len(per), "per_sample": per,
            "sample_tokens": [len(r) for r in resp_ids],
            "estimator": "mean over prompts of sum_t log pi(y_t) - log pi_ref(y_t), y ~ pi at T=1",
            "sampling": {"temperature": 1.0, "top_p": 1.0, "seed": config.seed,
                         "max_tokens": config.kl_max_tokens or config.max_tokens}}


def _summarise(config, prompts, rejects, pol_gens, ref_gens, pol_v, ref_v, pol_r, ref_r,
               judge, kl, pmi=(None, None)) -> dict[str, Any]:
    pol_len = [len(g.token_ids) for g in pol_gens]
    ref_len = [len(g.token_ids) for g in ref_gens] if ref_gens else None
    summary: dict[str, Any] = {
        "config": config.model_dump(),
        "prompts": {"n": len(prompts), "harmful": sum(p.kind == "harmful" for p in prompts),
                    "benign": sum(p.kind == "benign" for p in prompts), "rejected": len(rejects),
                    "files": [f for f, _ in config.files()]},
        "policy": _side_summary(prompts, [v.label for v in pol_v], pol_len, pol_r, pmi[0],
                                config.relevance_threshold),
        "reference": (_side_summary(prompts, [v.label for v in ref_v], ref_len, ref_r, pmi[1],
                                    config.relevance_threshold)
                      if ref_v else None),
        "truncated": {"policy": sum(g.finish_reason == "length" for g in pol_gens),
                      "reference": sum(g.finish_reason == "length" for g in ref_gens) if ref_gens else None},
    }
    groups = {"all": list(range(len(prompts))),
              **{k: [i for i, p in enumerate(prompts) if p.kind == k] for k in ("harmful", "benign")}}
    win: dict[str, Any] = {}
    if pol_r is not None and ref_r is not None:
        win["reward_model"] = {g: stats.win_rate([_outcome(pol_r[i], ref_r[i]) for i in idx])
                               for g, idx in groups.items()}
    if judge is not None:
        win["judge"] = {}
        for g, idx in groups.items():
            ps = [judge[i] for i in idx if judge[i] is not None]
            entry = stats.win_rate([_outcome(p, 0.5) for p in ps])
            entry["mean_p_policy"] = stats.mean(ps)
            entry["not_judged"] = sum(judge[i] is None for i in idx)
            win["judge"][g] = entry
        win["judge_settings"] = {"constitution": config.constitution,
                                 "model": config.judge_model or config.reference,
                                 "principles": config.judge_principles, "orders": ["ab", "ba"]}
    summary["win_rate"] = win or None
    if kl is not None:
        summary["kl"] = {k: v for k, v in kl.items() if k not in ("per_sample", "sample_tokens")}
    else:
        summary["kl"] = None
    summary["categories"] = _categories(prompts, pol_v, ref_v, pol_r, ref_r, judge)
    return summary


def _categories(prompts, pol_v, ref_v, pol_r, ref_r, judge) -> dict[str, Any]:
    idx_by: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        idx_by[p.category].append(i)
    out = {}
    for cat, idx in sorted(idx_by.items(), key=lambda kv: (prompts[kv[1][0]].kind, kv[0])):
        row: dict[str, Any] = {"kind": prompts[idx[0]].kind, "n": len(idx),
                               "policy_safe": stats.proportion(sum(pol_v[i].safe for i in idx), len(idx))}
        if ref_v:
            row["reference_safe"] = stats.proportion(sum(ref_v[i].safe for i in idx), len(idx))
        if pol_r is not None:
            row["policy_reward"] = stats.mean([pol_r[i] for i in idx])
        if ref_r is not None:
            row["reference_reward"] = stats.mean([ref_r[i] for i in idx])
            row["reward_win_rate"] = stats.win_rate([_outcome(pol_r[i], ref_r[i]) for i in idx])["rate"]
        if judge is not None:
            ps = [judge[i] for i in idx if judge[i] is not None]
            row["judge_win_rate"] = stats.win_rate([_outcome(p, 0.5) for p in ps])["rate"]
        out[cat] = row
    return out


def _samples(prompts, pol_gens, ref_gens, pol_v, ref_v, pol_r, ref_r, judge, kl,
             pmi=(None, None)):
    for i, p in enumerate(prompts):
        row: dict[str, Any] = {
            "id": p.id, "kind": p.kind, "category": p.category, "prompt": p.text,
            "policy": {"response": pol_gens[i].text, "tokens": len(pol_gens[i].token_ids),
                       "finish_reason": pol_gens[i].finish_reason, "verdict": pol_v[i].label,
                       "rule": pol_v[i].rule,
                       "reward": pol_r[i] if pol_r is not None else None,
                       "relevance_pmi": pmi[0][i] if pmi[0] is not None else None},
        }
        if ref_gens:
            row["reference"] = {"response": ref_gens[i].text, "tokens": len(ref_gens[i].token_ids),
                                "finish_reason": ref_gens[i].finish_reason,
                                "verdict": ref_v[i].label, "rule": ref_v[i].rule,
                                "reward": ref_r[i] if ref_r is not None else None,
                                "relevance_pmi": pmi[1][i] if pmi[1] is not None else None}
        if judge is not None:
            row["judge_p_policy"] = judge[i]
        if kl is not None:
            row["kl_sample"] = kl["per_sample"][i]
            row["kl_sample_tokens"] = kl["sample_tokens"][i]
        yield row
