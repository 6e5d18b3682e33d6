"""Stage configs from a pipeline YAML section, with CLI flags on top.

Every stage has one pydantic config class (`GenerateConfig`, `LabelConfig`, `SFTConfig`, ...).
The class is the single source of its YAML keys and of what its flags may set:
`load_section(path, "generate", GenerateConfig, overrides)` reads the `generate:` section of a
pipeline file (or a file that is only that section), lays the non-None `overrides` over it
(nested dicts merge key by key) and validates the result, with every error named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cai.schema import validation_errors as format_validation_error  # the one formatter

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A stage config that cannot be used (bad YAML, unknown key, bad value)."""


def read_section(path: str | os.PathLike, section: str, *,
                 marker_key: str | None = None) -> dict[str, Any]:
    """The `section:` mapping of a YAML file. A file that is only that section is accepted
    when it has `marker_key` at the top level (e.g. `prompts` for generate). Read with
    `yaml.safe_load` semantics within `cai.limits` (no alias bombs, no runaway nesting)."""
    import yaml

    from cai.limits import YAMLLimitError, load_yaml

    try:
        doc = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    except YAMLLimitError as e:
        m = e.problem_mark
        raise ConfigError(f"{path}:{m.line + 1}:{m.column + 1}: {e.problem}") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with a `{section}:` section")
    found = doc.get(section, doc if marker_key and marker_key in doc else None)
    if not isinstance(found, dict):
        raise ConfigError(f"{path}: no `{section}:` section")
    return dict(found)


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`overrides` (CLI flags) over `data`; None means "flag not given"."""
    out = dict(data)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load_section(path: str | os.PathLike | None, section: str, cls: type[T],
                 overrides: dict[str, Any] | None = None, *,
                 marker_key: str | None = None) -> T:
    """Validate `cls` from the file's `section:` (if a path is given) plus `overrides`."""
    data = read_section(path, section, marker_key=marker_key) if path is not None else {}
    if path is not None:
        refuse_renamed_keys(path, section, data, cls)
    data = merge_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        lines = format_validation_error(e)
        raise ConfigError(f"{where}invalid {section} config\n  " + "\n  ".join(lines)) from None


# ---------------------------------------------------------------------------------------------
# The one stage vocabulary. Every stage config extends `StageConfig` (as TRL's configs extend
# `TrainingArguments`); stages that run an engine add `EngineConfig`, training stages add
# `TrainConfig`. One name per idea; the old spellings are refused, never aliased.

# old key -> the key that replaced it (a dotted name lives inside a mapping field)
RENAMED: dict[str, str] = {
    "output_dir": "out",
    "policy": "model",
    "reward_model": "reward",
    "field": "prompt_field",
    "learning_rate": "lr",
    "value_learning_rate": "value_lr",
    "scheduler": "lr_scheduler",
    "max_new_tokens": "max_tokens",
    "rollout_backend": "backend",
    "gpu_memory_utilization": "backend_options.gpu_memory_utilization",
    "vllm_gpu_memory_utilization": "backend_options.gpu_memory_utilization",
}


def renamed_key_message(old: str) -> str:
    new = RENAMED[old]
    if "." in new:
        parent, child = new.split(".", 1)
        return f"`{old}` is now `{new}` (write `{parent}: {{{child}: ...}}`)"
    return f"`{old}` is now `{new}`"


def old_spellings(cls: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """The keys of `data` that are old spellings (RENAMED) and not fields of `cls`."""
    return [k for k in data if k in RENAMED and k not in cls.model_fields]


def refuse_renamed_keys(path: str | os.PathLike, section: str, data: dict[str, Any],
                        cls: type[BaseModel]) -> None:
    """ConfigError naming file, line, section and key for each old spelling in `data` (the
    `section:` read from `path`), before validation says it less precisely."""
    old = old_spellings(cls, data)
    if not old:
        return
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    # the section's own header, when the file has one (else the file is the bare section)
    start = next((i + 1 for i, t in enumerate(lines) if t.startswith(f"{section}:")), 0)
    problems = []
    for key in old:
        at = next((i + 1 for i in range(start, len(lines))
                   if lines[i].lstrip().startswith(f"{key}:")), None)
        problems.append(f"{path}:{at}: " if at else f"{path}: ")
        problems[-1] += f"{section}.{key}: {renamed_key_message(key)}"
    raise ConfigError("\n".join(problems))


class StageConfig(BaseModel):
    """What every stage has: where it writes, which model it starts from, its seed, and
    whether it shows progress."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="output directory (or file, where the stage writes one)")
    model: str | None = Field(None, description="registry name, model directory or hub id "
                                                "(default: the embedded model)")
    seed: int = Field(0, description="random seed (sampling, shuffles, principle draws)")
    progress: bool = Field(True, description="progress bars and a summary on stderr")

    @model_validator(mode="before")
    @classmethod
    def _refuse_old_spellings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = old_spellings(cls, data)
            if old:
                raise ValueError("; ".join(renamed_key_message(k) for k in old))
        return data


class RayConfig(BaseModel):
    """Where and how wide a stage runs on Ray (`ray:` under `run:` or in a stage section;
    `--ray [ADDRESS] --replicas N`). Here, below every stage, so `EngineConfig` can hold it;
    the code that uses it is `cai.cluster`, which is the only place Ray is imported."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="cluster address (host:port, ray://host:port "
                                                  "or auto); None: $RAY_ADDRESS (set by `ray "
                                                  "job submit`), else a local Ray")
    replicas: int = Field(1, ge=1, description="engine replicas (one actor, one engine each)")
    gpus_per_replica: float = Field(0, ge=0, description="GPUs each replica reserves")
    cpus_per_replica: float = Field(1, gt=0, description="CPUs each replica reserves")


class EngineConfig(StageConfig):
    """A stage that runs prompts through an inference engine (a cai backend)."""

    backend: str | None = Field(None, description="vllm | transformers | openai (default: vllm "
                                                  "when installed)")
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="passed to load_backend: gpu_memory_utilization (the "
                                          "one place for the GPU/RAM share), base_url, ...")
    prompt_field: str = Field("prompt", description="text field holding a single-turn prompt")
    messages_field: str = Field("messages", description="field holding a message list")
    max_tokens: int = Field(256, ge=1, description="tokens per generated answer")
    ray: RayConfig | None = Field(None, description="run the engine work on Ray actors, one "
                                                    "engine per replica (None: in this process)")


class TrainConfig(StageConfig):
    """A stage that trains weights: optimisation and checkpointing shared by SFT, RM and PPO."""

    lr: float = Field(5e-5, gt=0.0, description="learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule (transformers' get_scheduler)")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="clip; None switches it off")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="bf16/fp16 autocast with fp32 weights. auto: bf16 on a CUDA GPU "
                            "that supports it and on a CPU with AMX (native bf16 matmul), else fp32")
    attn_implementation: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="attention kernel. auto: eager on a CPU when its saved attention "
                            "weights stay under 2 GiB (its backward beats SDPA's there), else "
                            "the model's default")
    strategy: Literal["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp", description="how several processes share the work (cai.train.strategy): ddp "
                           "(CPU or GPU); fsdp2 / deepspeed_zero2 / deepspeed_zero3 shard the "
                           "model over GPUs")
    save_every: int | None = Field(100, ge=1, description="optimizer steps (PPO: iterations) "
                                                          "between checkpoints")
    keep_checkpoints: int = Field(1, ge=1, description="checkpoints kept while training")
    resume: bool = Field(False, description="continue from the last checkpoint in `out`")
    # LoRA (peft); off when lora_r is None
    lora_r: int | None = Field(None, ge=1, description="LoRA rank (None: train all weights)")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge_lora: bool = Field(True, description="save the merged model (else the adapter)")
    # Ray Train (cai.cluster.train): the same run on `workers` workers of a Ray cluster
    workers: int | None = Field(None, ge=1, description="Ray Train workers (None: this process, "
                                                        "or the ranks torchrun/accelerate start)")
    ray: str | None = Field(None, description="Ray cluster address for `workers` (None: a local "
                                              "Ray on this machine)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs each Ray Train worker reserves")

    @model_validator(mode="after")
    def _ray_needs_workers(self):
        if self.workers is None and (self.ray is not None or self.gpus_per_worker):
            raise ValueError("ray / gpus_per_worker set without workers: N (the number of "
                             "Ray Train workers)")
        return self


# ---------------------------------------------------------------------------------------------
# The one run signature: run_x(config, *, backend=None, log=say, progress=progress_bar) -> dict.
# `log` takes cai's own lines for people; `progress` makes the bars (a stage passes
# disable=not config.progress), so a runner or a test can route or record both.

def say(message: str) -> None:
    """The default `log`: one line on stderr, above any open progress bar (`tqdm.write`
    clears the bars, prints and redraws them, rather than printing through one)."""
    import sys

    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def progress_bar(*, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 disable: bool = False, **kwargs: Any) -> Any:
    """The default `progress` factory: a tqdm bar on stderr (its ETA is tqdm's)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                file=sys.stderr, dynamic_ncols=True, **kwargs)
