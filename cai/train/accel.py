"""The accelerate setup every training stage uses: devices, mixed precision (fp32 on CPU,
bf16 on a GPU that has it), gradient accumulation, seeded data order, TensorBoard."""

from __future__ import annotations

import os
from pathlib import Path


def pick_mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(config, out: str | os.PathLike):
    """An Accelerator for `config` (a TrainingConfig). The DataLoader sampler is replaced by
    accelerate's seedable one, so epoch e always sees the same order (seed + e), which is
    what lets a resumed run skip exactly the batches it already saw."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    set_seed(config.seed)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(Path(out) / "tensorboard"))
    return Accelerator(
        mixed_precision=pick_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        project_config=project,
        log_with="tensorboard",
    )


def make_dataloader(dataset, *, batch_size: int, collate_fn, shuffle: bool, seed: int):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn,
                      generator=generator)
