"""A training run's directory: its config, checkpoints, and the DONE marker.

    out/
      train_config.json       the stage config that started the run (a resume must match it)
      checkpoints/step-00000050/   accelerate save_state (model, optimizer, scheduler, RNG)
                                   + trainer_state.json (epoch, batch in epoch, step, samples)
      metrics.jsonl, tensorboard/  (cai.train.metrics)
      config.json, model.safetensors, tokenizer files ...   the final model
      DONE                    written last: the run finished and the model above is whole

A checkpoint is written into `checkpoints/.tmp-step-N` and renamed when complete, so a
kill mid-save leaves the previous checkpoint as the latest. Older checkpoints are removed
only after a newer one is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cai.io import atomic_write_json
from cai.train.config import ConfigError, changed_fields, config_changes

CONFIG_FILE = "train_config.json"
STATE_FILE = "trainer_state.json"
DONE_FILE = "DONE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class RunState:
    """Where training stands; saved with every checkpoint."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of this epoch already consumed
    samples_seen: int = 0
    tokens_seen: int = 0


class RunDir:
    """`out` and its checkpoints. A stage with its own layout (PPO: `ppo_config.json`,
    `checkpoints/iter-000002/ppo_state.json`) names it; `run_only` overrides the fields a
    resume may change (default: cai.train.config.RUN_ONLY_FIELDS)."""

    def __init__(self, out: str | os.PathLike, *, config_file: str = CONFIG_FILE,
                 state_file: str = STATE_FILE, step_prefix: str = "step", step_digits: int = 8,
                 run_only: frozenset[str] | None = None):
        self.path = Path(out)
        self.checkpoints = self.path / "checkpoints"
        self.config_file, self.state_file = config_file, state_file
        self.step_prefix, self.step_digits = step_prefix, step_digits
        self.run_only = run_only
        self._step_dir = (_STEP_DIR if step_prefix == "step"
                          else re.compile(rf"^{re.escape(step_prefix)}-(\d+)$"))

    # -- lifecycle ---------------------------------------------------------------------------

    def is_done(self) -> bool:
        return (self.path / DONE_FILE).is_file()

    def done_summary(self) -> dict[str, Any]:
        return json.loads((self.path / DONE_FILE).read_text(encoding="utf-8"))

    def finished(self, config: BaseModel) -> dict[str, Any] | None:
        """The summary of a finished run with this same config (a rerun is a no-op), else
        None; a finished run with another config is refused, naming the fields."""
        if not self.is_done():
            return None
        self.check_config(config)
        return {**self.done_summary(), "skipped": True}

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / DONE_FILE, summary)

    def saved_config(self) -> dict[str, Any] | None:
        p = self.path / self.config_file
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def check_config(self, config: BaseModel) -> None:
        """Refuse to continue or skip a run whose stored config differs (naming the fields)."""
        saved = self.saved_config()
        if saved is None:
            return
        if self.run_only is None:
            changes = config_changes(saved, config)
        else:
            changes = [f"{key} (was {was!r}, now {now!r})" for key, was, now in changed_fields(
                saved, config.model_dump(mode="json"), type(config).model_fields, self.run_only)]
        if changes:
            raise ConfigError(f"{self.path} holds a run with a different config: "
                              + "; ".join(changes)
                              + ". Use the same settings, or another output directory.")

    def start(self, config: BaseModel, *, write: bool = True) -> None:
        """Prepare `out` for a fresh run or a resume (call unless `is_done()`). Every rank of a
        distributed run checks; only the main one writes (`write`)."""
        ckpt = self.latest_checkpoint()
        if ckpt is not None and not getattr(config, "resume", False):
            raise ConfigError(f"{self.path} holds an unfinished run (last checkpoint "
                              f"{ckpt.name}); pass --resume to continue it, or choose another "
                              "output directory")
        if getattr(config, "resume", False):
            self.check_config(config)
        elif self.saved_config() is not None and ckpt is None:
            pass  # a run that died before its first checkpoint: start over
        if not write:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / self.config_file, config.model_dump(mode="json"))

    # -- checkpoints ---------------------------------------------------------------------------

    def list_checkpoints(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir()
                 if (m := self._step_dir.match(p.name)) and (p / self.state_file).is_file()]
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, accelerator, state: RunState, keep: int) -> Path:
        """accelerate save_state into a temp dir, then rename; prune to the last `keep`.
        `state` is a dataclass with a `global_step` (a stage may bring its own)."""
        name = f"{self.step_prefix}-{state.global_step:0{self.step_digits}d}"
        final = self.checkpoints / name
        tmp = self.checkpoints / f".tmp-{name}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            atomic_write_json(tmp / self.state_file, asdict(state))
            if final.exists():  # a rerun of the same step after a crash right after renaming
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.list_checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, accelerator, path: Path, state_type: type = RunState):
        accelerator.load_state(str(path))
        return state_type(**json.loads((path / self.state_file).read_text(encoding="utf-8")))

    def remove_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoints, ignore_errors=True)
