"""`EnginePool`: the inference engines of one `cai run`, one per (backend, model, options).

An engine start costs about 35 s on a 2-core CPU (vLLM), so an engine is started once and
kept while a later step needs the same weights: the base model's engine serves generate,
label and eval's reference; a trained model's engine serves every later step that samples
from it. Kept engines hold memory (vLLM on CPU claims `gpu_memory_utilization` x RAM, or
`kv_cache_memory_bytes`), and training needs memory too, so before each step the pool

  1. closes the engines no later step needs;
  2. closes kept engines, the one needed latest first, until the memory left covers what
     the step will claim: the engines it starts, or `train_reserve` for a step that trains.

Nothing is counted twice: `available()` is measured with the kept engines already resident.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

EngineKey = tuple[str, str, str]  # (backend name, model, options as JSON)
Echo = Callable[[str], None]

GiB = 1024 ** 3
# What a training step may claim beside the engines kept through it: the demo's PPO (policy,
# reference, value and reward models of 135M parameters in fp32 with their optimiser states,
# plus its own rollout engine at 0.1 of RAM) stays under this on a 24 GiB machine.
TRAIN_RESERVE = 8 * GiB
VLLM_CPU_SHARE = 0.4  # VLLMBackend's gpu_memory_utilization default on a CPU


def _on_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def total_memory() -> int:
    """Bytes of the memory engines take: the GPU's on a CUDA machine, else RAM."""
    if _on_cuda():
        import torch

        return torch.cuda.mem_get_info()[1]
    import psutil

    return psutil.virtual_memory().total


def available_memory() -> int:
    """Bytes free now, where engines and training take memory (see `total_memory`)."""
    if _on_cuda():
        import torch

        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def _weights_bytes(model: str) -> int:
    path = Path(model)
    if not path.is_dir():
        from cai.models import models_dir, registry_name

        name = registry_name(model)
        path = models_dir() / name if name else path
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else 0


def engine_footprint(name: str, model: str, options: dict[str, Any]) -> int:
    """Bytes an engine claims: vLLM its KV cache space (kv_cache_memory_bytes, else
    VLLM_CPU_KVCACHE_SPACE GiB on a CPU, else its memory share of the device) plus weights;
    transformers its weights; a remote server nothing here."""
    if name == "openai":
        return 0
    weights = _weights_bytes(model)
    if name != "vllm":
        return weights
    if options.get("kv_cache_memory_bytes"):
        return int(options["kv_cache_memory_bytes"]) + weights
    if not _on_cuda() and os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return int(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * GiB + weights
    share = options.get("gpu_memory_utilization") or (0.85 if _on_cuda() else VLLM_CPU_SHARE)
    return int(share * total_memory())  # vLLM's share includes its weights


def model_key(model: str | None) -> str:
    """One spelling per model: the default model, its registry name and its pulled directory
    are the same engine."""
    from cai.models import registry_name

    name = registry_name(model)
    if name is not None:
        return f"registry:{name}"
    path = Path(str(model)).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


class EnginePool:
    """Engines started once per run and kept while later steps need them and memory allows
    (module docstring). `load`, `footprint` and `available` are injectable for tests."""

    def __init__(self, echo: Echo, load: Callable[..., Any] | None = None, *,
                 footprint: Callable[[str, str, dict[str, Any]], int] = engine_footprint,
                 available: Callable[[], int] = available_memory,
                 train_reserve: int = TRAIN_RESERVE,
                 progress: Callable[..., Any] | None = None) -> None:
        self.echo, self.load = echo, load
        self.footprint, self.available, self.train_reserve = footprint, available, train_reserve
        self.progress = progress
        self.engines: dict[EngineKey, Any] = {}
        self.sizes: dict[EngineKey, int] = {}
        self.starts = 0
        self.reused = 0

    def key(self, name: str | None, model: str | None, options: dict[str, Any]) -> EngineKey:
        from cai.backends import default_backend

        return (name or default_backend(), model_key(model), json.dumps(options, sort_keys=True))

    def prepare(self, needs: Sequence[EngineKey], later: Sequence[Sequence[EngineKey]],
                trains: bool) -> None:
        """Before a step that uses the engines `needs` (none: it trains, when `trains`),
        with `later` the engines of each step after it, in order: close what no later step
        needs, then what the step's memory needs (module docstring) leave no room for."""
        for key in [k for k in self.engines if k not in needs and not any(k in s for s in later)]:
            self._close(key, "no later step uses it")
        claim = sum(self._size(k) for k in needs if k not in self.engines)
        claim += self.train_reserve if trains else 0

        def next_use(k: EngineKey) -> int:
            return next((i for i, s in enumerate(later) if k in s), len(later))

        idle = sorted((k for k in self.engines if k not in needs), key=next_use, reverse=True)
        for key in idle:
            if self.available() >= claim:
                break
            self._close(key, f"the next step needs {claim / GiB:.1f} GiB")

    def get(self, name: str | None, model: str | None, options: dict[str, Any], *,
            show_progress: bool = True) -> Any:
        """The engine for (name, model, options): the running one, else a new one."""
        key = self.key(name, model, options)
        if key in self.engines:
            self.reused += 1
            self.echo(f"  reusing the {key[0]} engine on {model or 'the default model'}")
            return self.engines[key]
        load = self.load
        if load is None:
            from cai.backends import load_backend as load
        from cai.config import progress_bar
        from cai.progress import loading

        what = f"{key[0]} engine on {model or 'the default model'}"
        self.echo(f"  starting the {what} ...")
        t0 = time.perf_counter()
        with loading(self.progress or progress_bar, what, disable=not show_progress):
            self.engines[key] = load(key[0], model, **options)
        self.starts += 1
        self.echo(f"  engine ready in {time.perf_counter() - t0:.0f} s")
        return self.engines[key]

    def _size(self, key: EngineKey) -> int:
        if key not in self.sizes:
            self.sizes[key] = self.footprint(key[0], key[1].removeprefix("registry:"),
                                             json.loads(key[2]))
        return self.sizes[key]

    def _close(self, key: EngineKey, why: str) -> None:
        self.echo(f"  closing the {key[0]} engine on {key[1].removeprefix('registry:')}: {why}")
        self.engines.pop(key).close()

    def close(self) -> None:
        for key in list(self.engines):
            self.engines.pop(key).close()
