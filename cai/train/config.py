"""What supervised training shares: `TrainingConfig` (data, batches, epochs, evaluation) on
top of `cai.config.TrainConfig` (optimisation, LoRA, checkpointing), and reading a stage's
section of a pipeline YAML with flags on top.

`SFTConfig` and `RMConfig` subclass `TrainingConfig`; PPO's config extends TrainConfig. Fields listed in
`RUN_ONLY_FIELDS` only change how a run is watched or where it writes, not what it
computes, so a resume may change them; any other change is refused (`config_changes`).
Configs load from a pipeline YAML section with `cai.config.load_section(path, "rm", RMConfig,
overrides)`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

# One ConfigError for every stage; a resume against a different config raises it too.
from cai.config import ConfigError, TrainConfig, load_section


class TrainingConfig(TrainConfig):
    """Supervised training (SFT, RM) on top of TrainConfig's optimisation, LoRA and
    checkpointing: the data, the batches, the epochs and when to evaluate. `out` holds the
    model, metrics.jsonl, tensorboard/ and checkpoints/."""

    data: list[str] = Field(min_length=1, description="training data (stage-specific forms)")
    eval_data: str | None = Field(None, description="held-out data; default: split from `data`")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                 description="share of prompts held out when eval_data is unset")
    max_length: int = Field(512, ge=8, description="tokens per sequence")
    epochs: int = Field(1, ge=1, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; caps epochs")
    batch_size: int = Field(8, ge=1, description="sequences (SFT) or pairs (RM) per device batch")
    grad_accum: int = Field(1, ge=1, description="batches per optimizer step")
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0, description="used when warmup_steps is 0")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward "
                                                            "(less memory, more time)")
    log_every: int = Field(10, ge=1, description="optimizer steps per metrics line")
    eval_every: int | None = Field(None, ge=1, description="optimizer steps between evals "
                                                           "(always once at the end)")
    keep_checkpoints_when_done: bool = Field(False, description="else removed once the model "
                                                                "is saved")
    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


# Changing these between an interrupted run and its resume is allowed.
RUN_ONLY_FIELDS = frozenset({"out", "resume", "progress", "log_every", "eval_every", "ray",
                             "save_every", "keep_checkpoints", "keep_checkpoints_when_done"})


def changed_fields(saved: dict[str, Any], now: dict[str, Any], fields: dict[str, Any],
                   run_only: frozenset[str]) -> list[tuple[str, Any, Any]]:
    """(name, saved value, current value) of each field beyond `run_only` whose value differs.
    A field the saved config lacks was added after the run started: it ran at its default."""
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in run_only:
            continue
        was = saved[key] if key in saved else (
            fields[key].get_default(call_default_factory=True)
            if key in fields and not fields[key].is_required() else None)
        if was != now.get(key):
            out.append((key, was, now.get(key)))
    return out


def config_changes(saved: dict[str, Any], current: BaseModel) -> list[str]:
    """Names of the fields (beyond RUN_ONLY_FIELDS) whose values differ, with both values."""
    return [f"{key} (was {was!r}, now {now!r})"
            for key, was, now in changed_fields(saved, current.model_dump(mode="json"),
                                                type(current).model_fields, RUN_ONLY_FIELDS)]


def run_on_workers(config: TrainingConfig, run, log) -> dict[str, Any]:
    """`run(config)` on `config.workers` Ray Train workers; each runs it without `workers`."""
    from cai.cluster.train import run_on_ray_train

    return run_on_ray_train(config.model_copy(update={"workers": None, "ray": None,
                                                      "gpus_per_worker": 0}), run,
                            address=config.ray, workers=config.workers,
                            gpus_per_worker=config.gpus_per_worker, log=log)


__all__ = ["ConfigError", "RUN_ONLY_FIELDS", "TrainingConfig", "changed_fields", "config_changes",
           "load_section", "run_on_workers"]
