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


def builtin_stages() -> list[Stage]:
    """The stages this install has, in run order."""
    return [GENERATE]
