"""A training stage on Ray Train: the same stage function (`run_sft`, `run_rm`, `run_ppo`)
runs in each of `workers` Ray Train workers (`ray.train.torch.TorchTrainer`), which sets up
the torch process group (gloo on CPUs, NCCL on GPUs) and the RANK/WORLD_SIZE environment that
accelerate reads; from there the stage is the same as under torchrun or `accelerate launch`.

The stage's own output directory holds the model, metrics and checkpoints (the nodes must
share it, as `RunConfig(storage_path=...)` requires); Ray Train's own run records go to
`out/ray/`. `workers.json` in `out` names the node each rank ran on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from cai.cluster import connect

WORKERS_FILE = "workers.json"


def scaling(workers: int, gpus_per_worker: float) -> dict[str, Any]:
    """ScalingConfig keywords: one CPU per worker, and `gpus_per_worker` GPUs when set."""
    resources = {"CPU": 1.0, **({"GPU": float(gpus_per_worker)} if gpus_per_worker else {})}
    return {"num_workers": workers, "use_gpu": gpus_per_worker > 0,
            "resources_per_worker": resources}


def _record_placement(out: Path) -> None:
    """Rank 0 writes which node each rank runs on (gathered over the process group)."""
    import ray
    import torch.distributed as dist

    me = {"rank": dist.get_rank(), "node_id": ray.get_runtime_context().get_node_id()}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    if dist.get_rank() == 0:
        from cai.io import atomic_write_json

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / WORKERS_FILE, everyone)


def run_on_ray_train(config, run: Callable[..., dict[str, Any]], *, address: str | None,
                     workers: int, gpus_per_worker: float = 0,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Run `run(config)` on `workers` Ray Train workers and return rank 0's summary.
    `config` is the stage config as it runs in each worker (without the Ray settings)."""
    connect(address)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(config.out).resolve()
    cls, data = type(config), config.model_dump(mode="json")

    def train_fn(_loop_config):
        _record_placement(out)
        run(cls.model_validate(data))

    log(f"ray train: {workers} workers, {gpus_per_worker or 0} GPUs each")
    trainer = TorchTrainer(train_fn, scaling_config=ScalingConfig(**scaling(workers,
                                                                             gpus_per_worker)),
                           run_config=RunConfig(storage_path=str(out / "ray"), name="train"))
    trainer.fit()
    summary = json.loads((out / "DONE").read_text(encoding="utf-8"))
    summary["workers"] = json.loads((out / WORKERS_FILE).read_text(encoding="utf-8"))
    return summary


__all__ = ["WORKERS_FILE", "run_on_ray_train", "scaling"]
