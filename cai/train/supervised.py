"""The phases that `run_sft` and `run_rm` share around `run_loop`: opening the run (rank-0
log, tokenizer, run directory), building the model (attention, LoRA, gradient
checkpointing), and finishing it (the summary's common fields, the saved model, DONE)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from cai.train.checkpoint import RunDir


@dataclass
class OpenRun:
    """What every later phase of a supervised run needs."""
    run_dir: RunDir
    accelerator: Any
    log: Callable[[str], None]  # prints on rank 0 only
    model_path: str
    tokenizer: Any
    t0: float  # for the summary's wall_seconds


def finished_run(config, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The summary of a finished run with this config (a rerun has nothing to do), else None."""
    if (finished := RunDir(config.out).finished(config)) is not None:
        log(f"{config.out}: already finished; nothing to do")
    return finished


def open_run(config, log: Callable[[str], None]) -> OpenRun:
    from cai.train.accel import main_process_only, make_accelerator
    from cai.train.modeling import load_tokenizer, resolve_training_model

    t0 = time.perf_counter()
    run_dir = RunDir(config.out)
    accelerator = make_accelerator(config, run_dir.path)
    log = main_process_only(accelerator, log)
    model_path = resolve_training_model(config.model)
    return OpenRun(run_dir, accelerator, log, model_path, load_tokenizer(model_path), t0)


def start_run_dir(config, run: OpenRun, write_rejects: Callable[[], None]) -> None:
    """Every rank checks the run directory; rank 0 writes the config and (`write_rejects()`)
    the rejected rows while the others wait."""
    run.run_dir.start(config, write=run.accelerator.is_main_process)
    if run.accelerator.is_main_process:
        write_rejects()
    run.accelerator.wait_for_everyone()


def build_model(config, run: OpenRun, load: Callable, *, task_type: str, rows: int,
                max_len: int) -> tuple[Any, tuple[int, int]]:
    """(model, (trainable parameters, parameters)): `load(path, tokenizer, attn)` with the
    attention picked for batches of `rows` x `max_len` tokens, LoRA and gradient
    checkpointing per `config`."""
    from cai.train.modeling import (apply_lora, enable_gradient_checkpointing,
                                    pick_attn_implementation, trainable_parameters)

    attn = pick_attn_implementation(config.attn_implementation, run.model_path,
                                    on_cpu=run.accelerator.device.type == "cpu", rows=rows,
                                    max_len=max_len)
    model = load(run.model_path, run.tokenizer, attn)
    model = apply_lora(model, config, task_type=task_type)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, trainable_parameters(model)


def run_summary(stage: str, config, run: OpenRun, model, result, parameters: tuple[int, int],
                data: dict[str, Any]) -> dict[str, Any]:
    """The summary: run and device, then the stage's `data` counts, then training."""
    from cai.train.accel import choose_mixed_precision

    accelerator = run.accelerator
    trainable, total = parameters
    return {
        "stage": stage, "model": run.model_path, "out": str(run.run_dir.path),
        "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
        "precision": choose_mixed_precision(config.mixed_precision)[1],
        "attn_implementation": accelerator.unwrap_model(model).config._attn_implementation,
        **data, "steps": result.state.global_step, "epochs": config.epochs,
        "trainable_parameters": trainable, "parameters": total,
        "train_seconds": round(result.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - run.t0, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_train": result.last_metrics, "eval": result.eval_metrics,
    }


def save_and_finish(config, run: OpenRun, model, summary: dict[str, Any],
                    extra_files: dict[str, str] | None = None) -> dict[str, Any]:
    """Save the model (every rank joins), then rank 0 drops the checkpoints unless kept and
    writes DONE; returns `summary`."""
    from cai.train.modeling import save_hf_model

    save_hf_model(run.accelerator, model, run.tokenizer, run.run_dir.path,
                  merge_lora=config.merge_lora, extra_files=extra_files)
    if run.accelerator.is_main_process:
        if not config.keep_checkpoints_when_done:
            run.run_dir.remove_checkpoints()
        run.run_dir.mark_done(summary)
    return summary
