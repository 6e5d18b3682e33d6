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

Models of one architecture and tokenizer (`cai.backends.vllm_swap.weights_family`: the
demo's base model, SFT model and PPO policy) share one vLLM engine: a step gets a view bound
to its model, and the view loads that model's weights into the engine (about a second)
before any call while the engine holds another model's. Such an engine counts once, in
memory and in starts; it closes when no later step needs any model of its family.
`run: swap_weights: false` (the pool's `swap_weights`) starts one engine per model instead.
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


def _vllm_family(name: str, model: str, options: dict[str, Any]) -> tuple[str, str] | None:
    """(family, directory) of a vLLM model one engine can swap in (`cai.backends.vllm_swap`)."""
    if name != "vllm":
        return None
    from cai.backends.vllm_swap import weights_family

    return weights_family(model, options, cuda=_on_cuda())


def _shown(model: str | None) -> str:
    """A model as a person names it: its registry name, else its path (from here when below)."""
    from cai.models import registry_name

    if model is None:
        return "the default model"
    name = registry_name(model)
    if name is not None:
        return name
    path = Path(model)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else model


Slot = tuple  # one engine: its EngineKey, or ("swap", backend, family) for a swapping engine


class EnginePool:
    """Engines started once per run and kept while later steps need them and memory allows
    (module docstring). With `swap_weights`, models of one architecture and tokenizer share
    one vLLM engine (`cai.backends.vllm_swap`): each step gets a view bound to its model,
    which loads that model's weights into the engine before a call when the engine holds
    another's. `load`, `footprint`, `available` and `family` are injectable for tests."""

    def __init__(self, echo: Echo, load: Callable[..., Any] | None = None, *,
                 footprint: Callable[[str, str, dict[str, Any]], int] = engine_footprint,
                 available: Callable[[], int] = available_memory,
                 train_reserve: int = TRAIN_RESERVE,
                 progress: Callable[..., Any] | None = None, swap_weights: bool = True,
                 family: Callable[[str, str, dict[str, Any]],
                                  tuple[str, str] | None] = _vllm_family) -> None:
        self.echo, self.load = echo, load
        self.footprint, self.available, self.train_reserve = footprint, available, train_reserve
        self.progress = progress
        self.swap_weights, self.family = swap_weights, family
        self.engines: dict[Slot, Any] = {}  # the running engines
        self.views: dict[EngineKey, Any] = {}  # models handed out on swapping engines
        self.slots: dict[EngineKey, Slot] = {}
        self.dirs: dict[EngineKey, str] = {}  # the weights directory of a swappable key
        self.first: dict[Slot, EngineKey] = {}  # the key a slot's engine is sized by
        self.sizes: dict[Slot, int] = {}
        self.starts = 0
        self.reused = 0
        self.swaps = 0
        self.swap_s = 0.0

    def key(self, name: str | None, model: str | None, options: dict[str, Any]) -> EngineKey:
        from cai.backends import default_backend

        return (name or default_backend(), model_key(model), json.dumps(options, sort_keys=True))

    def slot(self, key: EngineKey, *, fresh: bool = False) -> Slot:
        """The engine serving `key`: one per weights family (vLLM, swapping on), else its own.
        A family is kept once found; a model without one is asked again next time, since
        an earlier step may not have written it yet (sft's output, when generate plans).
        `fresh`: read the model's files again (the step about to use it may have rewritten
        them since)."""
        if fresh or key not in self.slots:
            found = self.family(key[0], key[1].removeprefix("registry:"), json.loads(key[2])) \
                if self.swap_weights else None
            if found:
                self.dirs[key] = found[1]
                self.slots[key] = ("swap", key[0], found[0])
            else:
                self.slots.pop(key, None)
            self.first.setdefault(self.slots.get(key, key), key)
        return self.slots.get(key, key)

    def prepare(self, needs: Sequence[EngineKey], later: Sequence[Sequence[EngineKey]],
                trains: bool) -> None:
        """Before a step that uses the engines `needs` (none: it trains, when `trains`),
        with `later` the engines of each step after it, in order: close what no later step
        needs, then what the step's memory needs (module docstring) leave no room for."""
        now = {self.slot(k) for k in needs}
        ahead = [{self.slot(k) for k in step} for step in later]
        for slot in [s for s in self.engines if s not in now and not any(s in a for a in ahead)]:
            self._close(slot, "no later step uses it")
        claim = sum(self._size(s) for s in now if s not in self.engines)
        claim += self.train_reserve if trains else 0

        def next_use(s: Slot) -> int:
            return next((i for i, a in enumerate(ahead) if s in a), len(ahead))

        idle = sorted((s for s in self.engines if s not in now), key=next_use, reverse=True)
        for slot in idle:
            if self.available() >= claim:
                break
            self._close(slot, f"the next step needs {claim / GiB:.1f} GiB")

    def get(self, name: str | None, model: str | None, options: dict[str, Any], *,
            show_progress: bool = True) -> Any:
        """The engine for (name, model, options): the running one (a view on it bound to
        `model` where it swaps weights), else a new one."""
        key = self.key(name, model, options)
        slot = self.slot(key, fresh=True)
        if slot in self.engines:
            self.reused += 1
            engine = self.engines[slot]
            if slot == key:
                self.echo(f"  reusing the {key[0]} engine on {_shown(model)}")
                return engine
            held = "" if engine.weights == self.dirs[key] else (
                f" (holding {_shown(engine.weights)}'s weights; {_shown(model)}'s go in "
                "before its first call)")
            self.echo(f"  reusing the {key[0]} engine for {_shown(model)}{held}")
            return self._view(key)
        load = self.load
        if load is None:
            from cai.backends import load_backend as load
        from cai.config import progress_bar
        from cai.progress import loading

        what = f"{key[0]} engine on {_shown(model)}"
        self.echo(f"  starting the {what} ...")
        t0 = time.perf_counter()
        with loading(self.progress or progress_bar, what, disable=not show_progress):
            self.engines[slot] = load(key[0], model, **options)
        self.starts += 1
        self.echo(f"  engine ready in {time.perf_counter() - t0:.0f} s")
        return self.engines[slot] if slot == key else self._view(key)

    def _view(self, key: EngineKey) -> Any:
        """`key`'s view on its family's engine (a new one when the engine or the model's
        directory changed since the last)."""
        from cai.backends.vllm_swap import VLLMWeightsView

        engine, view = self.engines[self.slot(key)], self.views.get(key)
        if view is None or view.engine is not engine or view.model != self.dirs[key]:
            view = self.views[key] = VLLMWeightsView(engine, self.dirs[key], on_swap=self._swapped)
        return view

    def _swapped(self, model: str, seconds: float) -> None:
        self.swaps += 1
        self.swap_s += seconds
        self.echo(f"  swapped {_shown(model)}'s weights into the vllm engine ({seconds:.1f} s)")

    def _size(self, slot: Slot) -> int:
        if slot not in self.sizes:
            key = self.first[slot]
            self.sizes[slot] = self.footprint(key[0], key[1].removeprefix("registry:"),
                                              json.loads(key[2]))
        return self.sizes[slot]

    def _close(self, slot: Slot, why: str) -> None:
        engine = self.engines.pop(slot)
        swapping = slot[0] == "swap"
        on = _shown(engine.weights if swapping else slot[1].removeprefix("registry:"))
        self.echo(f"  closing the {slot[1] if swapping else slot[0]} engine on {on}: {why}")
        self.views = {k: v for k, v in self.views.items() if self.slot(k) != slot}
        engine.close()

    def close(self) -> None:
        self.views.clear()
        for slot in list(self.engines):
            self.engines.pop(slot).close()
