"""Watching a run: metrics.jsonl + TensorBoard in the output directory, a tqdm bar with
step, loss, tokens/s and ETA, and the guard that stops on a NaN or infinite loss."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient norm; the run stopped without saving."""


def check_finite(name: str, value: float, *, step: int, last_checkpoint: Path | None) -> None:
    if math.isfinite(value):
        return
    kept = (f"the last good checkpoint is {last_checkpoint} (continue from it with --resume, "
            "e.g. with a lower lr)") if last_checkpoint else "no checkpoint was written yet"
    raise NonFiniteLossError(f"{name} is {value} at optimizer step {step}; training stopped "
                             f"and nothing after the last checkpoint was saved; {kept}")


class MetricsLog:
    """One JSON object per line in metrics.jsonl, mirrored to accelerate's trackers
    (TensorBoard). On resume, lines past the checkpoint's step are dropped first, so the file
    reads as one uninterrupted run."""

    def __init__(self, accelerator, out: str | os.PathLike, *, resume_step: int | None,
                 run_name: str, step_key: str = "step"):
        self.accelerator = accelerator
        self.step_key = step_key  # the name of the step in each line (PPO: "iteration")
        self.path = Path(out) / METRICS_FILE
        if accelerator.is_main_process:
            if resume_step is None:
                self.path.unlink(missing_ok=True)
            elif self.path.is_file():
                kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                        if line.strip() and json.loads(line).get(step_key, 0) <= resume_step]
                from cai.io import atomic_write_text

                atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        self._trackers = False
        try:
            accelerator.init_trackers(run_name)
            self._trackers = True
        except Exception as e:  # noqa: BLE001 - TensorBoard is a convenience, not a requirement
            print(f"warning: TensorBoard logging off ({type(e).__name__}: {e})")

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {self.step_key: step, **values}
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if self._trackers:
            self.accelerator.log({k: v for k, v in values.items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)},
                                 step=step)

    def close(self) -> None:
        # not accelerator.end_training(): it also destroys the process group, which belongs
        # to the launcher and outlives a stage (`cai run` trains SFT, then the RM, then PPO)
        if self._trackers:
            for tracker in self.accelerator.trackers:
                tracker.finish()


class Progress:
    """A tqdm bar over optimizer steps (ETA from tqdm), with loss and tokens/s."""

    def __init__(self, total: int, initial: int, *, enabled: bool, desc: str,
                 make: Callable[..., Any] | None = None):
        # `make`: the run signature's `progress` factory (cai.config.progress_bar by default)
        from cai.config import progress_bar

        self.bar = (make or progress_bar)(total=total, initial=initial, disable=not enabled,
                                          desc=desc, unit="step")
        self._t0 = time.perf_counter()
        self._tokens = 0

    def update(self, loss: float, tokens: int) -> float:
        """Advance one step; returns tokens/s since the bar started."""
        self._tokens += tokens
        rate = self._tokens / max(time.perf_counter() - self._t0, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
        self.bar.update(1)
        return rate

    def close(self) -> None:
        self.bar.close()
