"""The stage registry: each stage's config class, run function, and how the runner wires
upstream outputs into its config.

The RL-CAI recipe (Bai et al., 2022), in run order:

    generate -> sft -> [sample -> label -> rm -> ppo] x rounds -> eval

A stage is `XConfig` + `run_x(config, *, backend=None, log=say, progress=progress_bar)
-> summary`, called the same way for every stage. The runner builds the config from the
stage's YAML section, the `run:` settings the section leaves unset (`model`, `backend`,
`backend_options`, `seed`, where the stage shares them) and the fields the stage's `wire`
fills in from upstream outputs (its `owned` fields; the user may not write those). Which upstream a field comes from depends on which stages the pipeline has:
sample draws from the SFT model when sft runs, else from the base model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from cai.pipeline.spec import RunSettings
from cai.stats import pct as _pct

ORDER = ("generate", "sft", "sample", "label", "rm", "ppo", "eval")
PER_ROUND = ("sample", "label", "rm", "ppo")


@dataclass
class Wiring:
    """What a stage's `wire` sees: the run settings, its own directory and round, and the
    output directories of the other stages, recording each one it uses as an input."""

    run: RunSettings
    round: int | None  # None for stages that run once
    dir: Path
    present: frozenset[str]  # the stages the pipeline has
    _dirs: dict[str, tuple[str, Path]]  # stage name -> (step key, directory), latest first
    _previous: dict[str, tuple[str, Path]]  # per-round stage -> the previous round's
    section: dict[str, Any] = field(default_factory=dict)  # what the user wrote
    used: list[str] = field(default_factory=list)  # step keys whose outputs feed this one

    def has(self, stage: str) -> bool:
        return stage in self.present

    def output(self, stage: str) -> Path:
        """The directory of `stage`'s latest run before this one (this round's for a
        per-round stage), recorded as an input."""
        key, path = self._dirs[stage]
        self.used.append(key)
        return path

    def previous(self, stage: str) -> Path | None:
        """The previous round's directory of a per-round stage (None in round 1)."""
        if stage not in self._previous:
            return None
        key, path = self._previous[stage]
        self.used.append(key)
        return path

    @property
    def base_model(self) -> str | None:
        return self.run.model


EngineKey = tuple[str, str, str]  # (backend name, model, options as JSON)


@dataclass(frozen=True)
class Stage:
    name: str
    config: str | type[BaseModel]  # "module:Class" (imported when used) or the class
    run: str | Callable[..., Any]  # "module:function" or the function
    wire: Callable[[Wiring], dict[str, Any]]
    per_round: bool = False  # runs once per round (sample, label, rm, ppo)
    owned: tuple[str, ...] = ("out",)  # filled in by the runner only
    shared: tuple[str, ...] = ("model", "backend", "backend_options", "ray", "seed")  # run:
    prompt_fields: tuple[str, ...] = ()  # may name a `prompts:` set
    file_fields: tuple[str, ...] = ()  # user paths whose contents are inputs
    # not part of the config hash (where the engines run changes no output)
    volatile: tuple[str, ...] = ("progress", "ray")
    # fields that, when only they grew (None = no cap, the largest), leave the old outputs
    # in place because the stage resumes into them and ends as a fresh run would
    grows: tuple[str, ...] = ()
    # inputs the stage updates in place: when only they changed, the old outputs stay and
    # the stage remakes what the change touched (generate: records of edited principles)
    rebuilds: tuple[str, ...] = ()
    # the inference engine the stage runs on, or None; passed to it as `backend=`
    engine: Callable[[Any], tuple[str | None, str | None, dict[str, Any]] | None] | None = None
    # further engines it takes, by keyword (eval: reference_backend, judge_backend)
    more_engines: Callable[[Any], dict[str, tuple[str | None, str | None, dict[str, Any]]]
                           ] | None = None
    brief: Callable[[dict[str, Any]], str] = lambda s: ""  # one line from its summary
    # lines for the end of the run summary (eval: the report and its before/after table)
    final: Callable[[dict[str, Any], Path], list[str]] | None = None

    def config_class(self) -> type[BaseModel]:
        return _resolve(self.config)

    def run_function(self) -> Callable[..., Any]:
        return _resolve(self.run)


def _resolve(ref: Any) -> Any:
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def engine_of(config: Any) -> tuple[str | None, str | None, dict[str, Any]] | None:
    """A stage config's own (backend, model, backend_options); None when it runs on Ray (its
    engines live in the Ray actors, so the runner starts none here)."""
    if getattr(config, "ray", None) is not None:
        return None
    return (getattr(config, "backend", None), getattr(config, "model", None),
            dict(getattr(config, "backend_options", None) or {}))


# --------------------------------------------------------------------------- generate

def _wire_generate(w: Wiring) -> dict[str, Any]:
    return {"out": str(w.dir)}


def _brief_generate(s: dict[str, Any]) -> str:
    return (f"{s.get('records', 0)} records, {s.get('sft', 0)} SFT rows, "
            f"{s.get('preferences', 0)} revision pairs")


GENERATE = Stage(
    name="generate",
    config="cai.generate.config:GenerateConfig",
    run="cai.generate.run:run_generate",
    wire=_wire_generate,
    prompt_fields=("prompts",),
    file_fields=("prompts",),
    volatile=("progress", "ray", "chunk_size"),
    grows=("limit",),  # a run directory accumulates records: --limit N = the first N prompts
    rebuilds=("constitution",),  # per-record principle hashes: cai.generate.incremental
    engine=engine_of,
    brief=_brief_generate,
)


# --------------------------------------------------------------------------- policies


def latest_policy(w: Wiring) -> str | None:
    """The model a per-round stage samples from: the previous round's PPO policy, else the
    SFT model, else None (the base model)."""
    prev = w.previous("ppo") if w.has("ppo") else None
    if prev is not None:
        return str(policy_dir("ppo", prev))
    if w.has("sft"):
        return str(policy_dir("sft", w.output("sft")))
    return None


def policy_dir(stage: str, stage_dir: Path) -> Path:
    """Where a training stage leaves its model (an HF directory vLLM and transformers load)."""
    return stage_dir / "policy" if stage == "ppo" else stage_dir


def _runner_written(w: Wiring, *names: str) -> None:
    for name in names:
        if name in w.section:
            raise ValueError(f"`{name}` is filled in by the runner from the stages before "
                             f"{w.dir.name}; leave it out")


# --------------------------------------------------------------------------- sample


def _wire_sample(w: Wiring) -> dict[str, Any]:
    out: dict[str, Any] = {"out": str(w.dir / "candidates.jsonl")}
    policy = latest_policy(w)
    if policy is not None:
        _runner_written(w, "model")
        out["model"] = policy
    return out


SAMPLE = Stage(
    name="sample",
    config="cai.label.sample:SampleRunConfig",
    run="cai.label.sample:run_sample",
    wire=_wire_sample,
    per_round=True,
    owned=("out", "rejects"),
    prompt_fields=("prompts",),
    file_fields=("prompts",),
    engine=engine_of,
    brief=lambda s: (f"{s.get('rows', 0)} prompts sampled, {s.get('truncated_samples', 0)} "
                     f"samples cut at max_tokens"),
)


# --------------------------------------------------------------------------- label


def _wire_label(w: Wiring) -> dict[str, Any]:
    """Label this round's samples, or (no sample stage) generate's revision pairs. The
    feedback model is `model:` (default the base model); `model: policy` labels with the
    latest policy, which saves an engine start when sample just ran on it."""
    out: dict[str, Any] = {"out": str(w.dir / "preferences"),
                           "rejects": str(w.dir / "rejects.jsonl")}
    if w.has("sample") or w.has("generate"):
        _runner_written(w, "pairs")
        out["pairs"] = (str(w.output("sample") / "candidates.jsonl") if w.has("sample")
                        else str(w.output("generate") / "preferences"))
    if w.section.get("model") == "policy":
        out["model"] = latest_policy(w) or w.run.model
    return out


def _brief_label(s: dict[str, Any]) -> str:
    rep = s.get("report") or {}
    text = f"{s.get('records', 0)} labeled pairs"
    if s.get("kept"):
        text += f" ({s.get('relabeled', 0)} labeled, {s['kept']} kept)"
    if rep.get("mean_p_chosen") is not None:
        text += f", mean p_chosen {rep['mean_p_chosen']:.3f}"
    if rep.get("position_consistency") is not None:
        text += f", same winner in both orders {rep['position_consistency']:.0%}"
    return text


LABEL = Stage(
    name="label",
    config="cai.label.run:LabelRunConfig",
    run="cai.label.run:run_label",
    wire=_wire_label,
    per_round=True,
    owned=("out", "rejects", "report"),
    file_fields=("pairs", "eval_against"),
    # per-label principle and input hashes: cai.label.incremental relabels what changed
    rebuilds=("constitution", "file:pairs", "generate", "sample"),
    engine=engine_of,
    brief=_brief_label,
)


# --------------------------------------------------------------------------- sft


def _wire_sft(w: Wiring) -> dict[str, Any]:
    """SL-CAI: fine-tune the base model on generate's revisions (its sft/ conversations)."""
    # the runner keeps an interrupted run's directory (same config and inputs): continue it
    out: dict[str, Any] = {"out": str(w.dir), "resume": True}
    if w.has("generate"):
        _runner_written(w, "data")
        out["data"] = [str(w.output("generate") / "sft")]
    return out


def _brief_train(s: dict[str, Any]) -> str:
    parts = []
    for key, name in (("steps", "steps"), ("optimizer_steps", "steps"), ("train_examples", "examples"),
                      ("train_pairs", "pairs")):
        if isinstance(s.get(key), (int, float)):
            parts.append(f"{s[key]} {name}")
    final = s.get("final_eval") or s.get("eval") or {}
    if isinstance(final, dict):
        for key in ("loss", "accuracy"):
            if isinstance(final.get(key), (int, float)):
                parts.append(f"eval {key} {final[key]:.3f}")
    return ", ".join(parts)


SFT = Stage(
    name="sft",
    config="cai.train.sft:SFTConfig",
    run="cai.train.sft:run_sft",
    wire=_wire_sft,
    shared=("model", "seed", "ray"),  # ray: the address, for its `workers:`
    file_fields=("eval_data",),
    volatile=("progress", "log_every", "save_every", "keep_checkpoints",
              "keep_checkpoints_when_done", "resume"),
    brief=_brief_train,
)


# --------------------------------------------------------------------------- rm


def _wire_rm(w: Wiring) -> dict[str, Any]:
    """The reward model trains on this round's AI labels, or (no label stage) on generate's
    revision pairs, as in HF's open CAI. The section's `data:` lists extra sources (e.g.
    imported human pairs, `path:weight`); the entry `upstream` (or `upstream:W`) places and
    weights the AI pairs, else they come first with weight 1. From round 2 on, the reward
    model starts from the previous round's (`model`)."""
    out: dict[str, Any] = {"out": str(w.dir), "resume": True}  # as sft
    upstream = (w.output("label") / "preferences" if w.has("label")
                else w.output("generate") / "preferences" if w.has("generate") else None)
    extra = list(w.section.get("data") or [])
    if isinstance(extra, str):
        extra = [extra]
    named = [x for x in extra if str(x).split(":")[0] == "upstream"]
    if upstream is None and named:
        raise ValueError("data: `upstream` names the AI pairs, but there is no label or "
                         "generate stage to make them")
    if upstream is not None:
        if named:
            extra = [str(upstream) + str(x)[len("upstream"):] if x in named else x for x in extra]
        else:
            extra = [str(upstream)] + extra
    if extra:
        out["data"] = extra
    previous = w.previous("rm")
    if previous is not None:
        _runner_written(w, "model")
        out["model"] = str(previous)
    return out


RM = Stage(
    name="rm",
    config="cai.train.rm:RMConfig",
    run="cai.train.rm:run_rm",
    wire=_wire_rm,
    per_round=True,
    shared=("model", "seed", "ray"),  # ray: the address, for its `workers:`
    file_fields=("data", "eval_data"),
    volatile=SFT.volatile,
    brief=_brief_train,
)


# --------------------------------------------------------------------------- ppo


def _wire_ppo(w: Wiring) -> dict[str, Any]:
    """PPO starts from the latest policy (last round's PPO policy, else the SFT model, else
    the base) against this round's reward model; `prompts` is the section's (a set name or
    a file)."""
    from cai.models import DEFAULT_MODEL

    # the runner keeps an interrupted run's directory (same config and inputs): continue it
    out: dict[str, Any] = {"out": str(w.dir), "resume": True}
    policy = latest_policy(w)
    if policy is not None:
        _runner_written(w, "model")
        out["model"] = policy
    elif "model" not in w.section:
        out["model"] = w.run.model or DEFAULT_MODEL
    if w.has("rm"):
        _runner_written(w, "reward")
        out["reward"] = str(w.output("rm"))
    return out


def _brief_ppo(s: dict[str, Any]) -> str:
    last = s.get("last") or s.get("last_metrics") or {}
    parts = [f"{s['iterations']} iterations"] if isinstance(s.get("iterations"), int) else []
    for key in ("reward", "kl"):
        if isinstance(last.get(key), (int, float)):
            parts.append(f"{key} {last[key]:.3f}")
    return ", ".join(parts)


PPO = Stage(
    name="ppo",
    config="cai.train.ppo_config:PPOConfig",
    run="cai.train.ppo:run_ppo",
    wire=_wire_ppo,
    per_round=True,
    # PPO starts its own rollout engine beside its training models, with its own memory
    # share, so the run's engine settings are not laid over its section; ray: the address,
    # for its `workers:`
    shared=("model", "seed", "ray"),
    prompt_fields=("prompts", "eval_prompts"),
    file_fields=("prompts", "eval_prompts"),
    volatile=("progress", "save_every", "keep_checkpoints", "resume"),
    brief=_brief_ppo,
)


# --------------------------------------------------------------------------- eval


def _wire_eval(w: Wiring) -> dict[str, Any]:
    """The final policy (the last PPO policy, else the SFT model) against the reference
    (the SFT model when PPO ran after it, else the base model; `reference: base` picks the
    base model, for a before/after of the whole recipe), scored by the last reward model,
    on the held-out prompts the section names. Afterwards eval rebuilds the run's report."""
    from cai.models import DEFAULT_MODEL

    out: dict[str, Any] = {"out": str(w.dir), "report": str(w.dir.parent)}
    base = w.run.model or DEFAULT_MODEL
    want_base = w.section.get("reference") == "base"
    if want_base:
        out["reference"] = base
    sft = str(w.output("sft")) if w.has("sft") else None
    if w.has("ppo") or sft is not None:
        _runner_written(w, "model")
        if not want_base:
            _runner_written(w, "reference")
        out["model"] = str(policy_dir("ppo", w.output("ppo"))) if w.has("ppo") else sft
        if not want_base:
            out["reference"] = (sft or base) if w.has("ppo") else base
    if w.has("rm"):
        _runner_written(w, "reward")
        out["reward"] = str(w.output("rm"))
    return out




def _mean_se(d: Any) -> str:
    """A mean as "0.10 ± 0.20" (± 1.96 standard errors) when the summary has its se."""
    if not isinstance(d, dict) or not isinstance(d.get("mean"), (int, float)):
        return "-"
    se = d.get("se")
    return f"{d['mean']:.2f}" + (f" ± {1.96 * se:.2f}" if isinstance(se, (int, float)) else "")


def final_eval(s: dict[str, Any], stage_dir: Path) -> list[str]:
    """The report's place and the before/after table the demo ends with (95% intervals)."""
    ref, pol = s.get("reference") or {}, s.get("policy") or {}
    kl = s.get("kl") or {}
    rows = [("refusal/redirect on harmful", _pct(ref.get("harmful_safe")),
             _pct(pol.get("harmful_safe"))),
            ("over-refusal on benign", _pct(ref.get("benign_over_refusal")),
             _pct(pol.get("benign_over_refusal"))),
            ("benign answered on topic", _pct((ref.get("addresses_prompt") or {}).get("benign")),
             _pct((pol.get("addresses_prompt") or {}).get("benign"))),
            ("KL(policy || reference), nats", "0", _mean_se(kl)),
            ("mean reward (reward model)", _mean_se(ref.get("reward")),
             _mean_se(pol.get("reward")))]
    lines = ["", f"{'held-out prompts':31}{'before':>24}{'after':>24}"]
    lines += [f"{name:31}{a:>24}{b:>24}" for name, a, b in rows]
    report = s.get("report") or {}
    lines += ["", f"report: {report.get('html', stage_dir.parent / 'report.html')}"
              + (f"  (and {report['md']})" if report.get("md") else "")]
    return lines


def _eval_engines(config: Any) -> dict[str, tuple[str | None, str | None, dict[str, Any]]]:
    """The reference's engine (often the base model's, kept from generate and label) and a
    judge's that is neither. None on Ray: eval loads its engines in the actors."""
    own = engine_of(config)
    if own is None:
        return {}
    backend, _, options = own
    out = {}
    if config.reference is not None:
        out["reference_backend"] = (backend, config.reference, options)
        if config.constitution and config.judge_model not in (None, config.reference):
            out["judge_backend"] = (backend, config.judge_model, options)
    return out


EVAL = Stage(
    name="eval",
    config="cai.eval.policy:EvalPolicyConfig",
    run="cai.eval.policy:run_eval_policy",
    wire=_wire_eval,
    engine=engine_of,
    more_engines=_eval_engines,
    owned=("out", "report"),
    prompt_fields=("prompts", "harmful", "benign"),
    file_fields=("prompts", "harmful", "benign"),
    brief=lambda s: "report written" if s.get("report") else "",
    final=final_eval,
)


def builtin_stages() -> list[Stage]:
    """The stages this install has, in run order."""
    return [GENERATE, SFT, SAMPLE, LABEL, RM, PPO, EVAL]
