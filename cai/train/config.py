"""What every training stage shares: `TrainingConfig` (optimisation, LoRA, checkpointing,
logging), and reading a stage's section of a pipeline YAML with flags on top.

Stage configs (`SFTConfig`, `RMConfig`, PPO's) subclass `TrainingConfig`. Fields listed in
`RUN_ONLY_FIELDS` only change how a run is watched or where it writes, not what it
computes, so a resume may change them; any other change is refused (`config_changes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A training config that cannot be used (bad YAML, unknown key, bad value, or a resume
    against a different config)."""


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # what to train, on what, where
    model: str | None = Field(None, description="registry name, HF directory or hub id "
                                                "(default: the embedded model)")
    data: list[str] = Field(min_length=1, description="training data (stage-specific forms)")
    eval_data: str | None = Field(None, description="held-out data; default: split from `data`")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                 description="share of prompts held out when eval_data is unset")
    out: str = Field(description="output directory: the model, metrics, checkpoints")
    max_length: int = Field(512, ge=8, description="tokens per sequence")
    # optimisation
    lr: float = Field(5e-5, gt=0.0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; caps epochs")
    batch_size: int = Field(8, ge=1, description="sequences (SFT) or pairs (RM) per device batch")
    grad_accum: int = Field(1, ge=1, description="batches per optimizer step")
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0, description="used when warmup_steps is 0")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="clip; None switches it off")
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else fp32")
    seed: int = 0
    # LoRA (peft); off when lora_r is None
    lora_r: int | None = Field(None, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge_lora: bool = Field(True, description="save the merged model (else the adapter)")
    # watching and checkpointing
    log_every: int = Field(10, ge=1, description="optimizer steps per metrics line")
    eval_every: int | None = Field(None, ge=1, description="optimizer steps between evals "
                                                           "(always once at the end)")
    save_every: int | None = Field(100, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(1, ge=1, description="checkpoints kept while training")
    keep_checkpoints_when_done: bool = Field(False, description="else removed once the model "
                                                                "is saved")
    resume: bool = Field(False, description="continue from the last checkpoint in `out`")
    progress: bool = True

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


# Changing these between an interrupted run and its resume is allowed.
RUN_ONLY_FIELDS = frozenset({"out", "resume", "progress", "log_every", "eval_every",
                             "save_every", "keep_checkpoints", "keep_checkpoints_when_done"})


def config_changes(saved: dict[str, Any], current: BaseModel) -> list[str]:
    """Names of the fields (beyond RUN_ONLY_FIELDS) whose values differ, with both values."""
    now = current.model_dump(mode="json")
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in RUN_ONLY_FIELDS:
            continue
        if saved.get(key) != now.get(key):
            out.append(f"{key} (was {saved.get(key)!r}, now {now.get(key)!r})")
    return out


C = TypeVar("C", bound=BaseModel)


def load_section(path: str | os.PathLike | None, section: str, cls: type[C],
                 overrides: dict[str, Any] | None = None) -> C:
    """The `section:` mapping of a pipeline YAML (or a file that is just that mapping), with
    `overrides` (CLI flags; None values ignored) on top, validated as `cls`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping with a `{section}:` section")
        part = doc.get(section, doc if "data" in doc else None)
        if not isinstance(part, dict):
            raise ConfigError(f"{path}: no `{section}:` section")
        data.update(part)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        lines = [f"{'.'.join(map(str, err['loc'])) or '(config)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{where}invalid {section} config\n  " + "\n  ".join(lines)) from None
