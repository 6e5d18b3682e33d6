"""The accelerate setup every training stage uses: devices, mixed precision (bf16 where the
device multiplies in bf16 natively: a CUDA GPU that has it, a CPU with AMX; else fp32),
gradient accumulation, seeded data order, TensorBoard; and how the ranks of a distributed run
share work outside the DataLoader (rank 0 logs; each rank scores a share, gathered)."""

from __future__ import annotations

import os
from pathlib import Path


def _cpu_probe(name: str) -> bool:
    """torch.cpu's private feature probe `name` (absent or failing means no)."""
    import torch

    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe and probe())
    except Exception:  # a private API
        return False


def cpu_has_bf16_matmul() -> bool:
    """True on CPUs with AMX tiles (Intel Sapphire Rapids and later), where oneDNN multiplies
    bf16 matrices several times faster than fp32 (bench/precision.py). avx512_bf16 alone only
    converts and dots faster; it is not enough to make autocast pay."""
    return _cpu_probe("_is_amx_tile_supported")


def choose_mixed_precision(requested: str, cpu: bool = False) -> tuple[str, str]:
    """(mixed precision, why), the why for people: "fp32: no AMX; avx512_bf16 absent".
    auto: bf16 on a CUDA GPU that supports it, and on a CPU with native bf16 matmul (AMX):
    weights stay fp32, autocast runs the matmuls in bf16. Else fp32 ("no")."""
    if requested != "auto":
        name = "fp32" if requested == "no" else requested
        return requested, f"{name}: mixed_precision: {requested} in the config"
    import torch

    if not cpu and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "bf16: CUDA GPU with bf16"
        return "no", "fp32: CUDA GPU without bf16"
    if cpu_has_bf16_matmul():
        return "bf16", "bf16: AMX (native bf16 matmul on this CPU)"
    if _cpu_probe("_is_avx512_bf16_supported"):
        # measured on an AMX machine with AMX unused (bench/precision.py)
        return "no", "fp32: no AMX; avx512_bf16 alone measured slower than fp32"
    return "no", "fp32: no AMX; avx512_bf16 absent"


def pick_mixed_precision(requested: str, cpu: bool = False) -> str:
    """The mixed precision of `choose_mixed_precision` (without the why)."""
    return choose_mixed_precision(requested, cpu)[0]


def allow_precision(mixed_precision: str, cpu: bool = False) -> None:
    """accelerate keeps one AcceleratorState per process and refuses an Accelerator whose
    mixed precision differs from the first one's, or that asks for the CPU after a GPU stage.
    One process may run several stages (`cai run`, tests), each with its own precision and
    device: drop the old state before building a stage's Accelerator. The process group
    (PartialState) is kept unless the device changes, which a single process alone may do."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import parse_flag_from_env

    partial = PartialState._shared_state
    device = partial.get("device") if partial else None
    wants_cpu = cpu or parse_flag_from_env("ACCELERATE_USE_CPU")
    device_changes = device is not None and (wants_cpu != (device.type == "cpu"))
    if device_changes and not wants_cpu:
        import torch  # a CPU state where no GPU is there is no change

        device_changes = torch.cuda.is_available()
    if device_changes:
        if partial.get("num_processes", 1) > 1:
            raise RuntimeError("a distributed run cannot switch between CPU and GPU between stages")
        AcceleratorState._reset_state(reset_partial_state=True)
        return
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def launched_on_cpu() -> bool:
    """A run asked for the CPU (ACCELERATE_USE_CPU, as `accelerate launch --cpu` sets), or
    started by a launcher (torchrun, Ray Train: WORLD_SIZE > 1) on a machine without a CUDA
    GPU. accelerate sets up gloo for several CPU processes only when told the run is on the
    CPU; without it each rank would train alone."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch

    return not torch.cuda.is_available()


def make_accelerator(config, out: str | os.PathLike):
    """An Accelerator for `config` (a TrainingConfig), with its strategy's plugin
    (cai.train.strategy) and gloo when several processes run on the CPU. The DataLoader
    sampler is replaced by accelerate's seedable one, so epoch e always sees the same order
    (seed + e), which is what lets a resumed run skip exactly the batches it already saw."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    from cai.train.strategy import make_plugin

    set_seed(config.seed)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(Path(out) / "tensorboard"))
    cpu = launched_on_cpu()
    # the sharded strategies are refused before a model loads when there is no GPU
    plugin = make_plugin(getattr(config, "strategy", "ddp"), grad_accum=config.grad_accum,
                         max_grad_norm=config.max_grad_norm,
                         on_cpu=cpu or not torch.cuda.is_available())
    precision = pick_mixed_precision(config.mixed_precision, cpu=cpu)
    allow_precision(precision, cpu=cpu)
    return Accelerator(
        cpu=cpu,
        **plugin,
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        project_config=project,
        log_with="tensorboard",
    )


def main_process_only(accelerator, log):
    """`log` on the main process; a no-op on the others, so N ranks print each line once."""
    return log if accelerator.is_main_process else (lambda *_a, **_k: None)


def rank_share(items: list, accelerator) -> list:
    """This rank's contiguous share of `items` (the first ranks take one more when the
    split is uneven); concatenated in rank order (gather_object) they are `items` again."""
    per, extra = divmod(len(items), accelerator.num_processes)
    r = accelerator.process_index
    start = r * per + min(r, extra)
    return items[start:start + per + (r < extra)]


def gather_rank_shares(accelerator, items: list, score) -> list:
    """`score(share)` (a list of results) on each rank's `rank_share` of `items`, the lists
    concatenated in rank order, i.e. in the order of `items`, on every rank (accelerate's
    gather_object): a held-out evaluation split across the ranks."""
    scored = score(rank_share(items, accelerator)) if items else []
    if accelerator.num_processes == 1:
        return scored
    from accelerate.utils import gather_object

    return gather_object(scored)


def make_dataloader(dataset, *, batch_size: int, collate_fn, shuffle: bool, seed: int):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn,
                      generator=generator)
