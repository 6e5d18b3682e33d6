"""The stage registry: each stage's config class, run function, and how the runner wires
upstream outputs into its config.

The RL-CAI recipe (Bai et al., 2022), in run order:

    generate -> sft -> [sample -> label -> rm -> ppo] x rounds -> eval

A stage is `XConfig` + `run_x(config, *, backend=None) -> summary`. The runner builds the
config from the stage's YAML section, the `run:` settings the section leaves unset
(`model`, `backend`, `backend_options`, `seed`, where the class has them) and the fields
the stage's `wire` fills in from upstream outputs (its `owned` fields; the user may not
write those). Which upstream a field comes from depends on which stages the pipeline has:
sample draws from the SFT model when sft runs, else from the base model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from cai.pipeline.spec import RunSettings

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
    shared: tuple[str, ...] = ("model", "backend", "backend_options", "seed")  # from run:
    prompt_fields: tuple[str, ...] = ()  # may name a `prompts:` set
    file_fields: tuple[str, ...] = ()  # user paths whose contents are inputs
    volatile: tuple[str, ...] = ("progress",)  # not part of the config hash
    # the inference engine the stage runs on, or None; passed to it as `backend=`
    engine: Callable[[Any], tuple[str | None, str | None, dict[str, Any]] | None] | None = None
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


def engine_of(config: Any) -> tuple[str | None, str | None, dict[str, Any]]:
    """A stage config's own (backend, model, backend_options)."""
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
    volatile=("progress", "chunk_size"),
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
    return stage_dir / "model" if stage == "ppo" else stage_dir


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
    file_fields=("eval_against",),
    engine=engine_of,
    brief=_brief_label,
)


def builtin_stages() -> list[Stage]:
    """The stages this install has, in run order."""
    return [GENERATE, SAMPLE, LABEL]
