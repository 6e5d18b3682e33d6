"""One vLLM engine for several checkpoints of one architecture: weights swapped in place.

An engine start costs ~30 s on a CPU; loading another checkpoint of the same architecture
into a running engine (vLLM's `reload_weights`) costs about a second. `weights_family` says
which models one engine can serve: two models with the same family differ only in their
weights. `VLLMWeightsView` is one model's handle on a shared engine: before each call it
swaps its weights in if the engine holds another model's.

Same family means equal, as local directories with safetensors weights (no LoRA adapter):
  - config.json, apart from the keys that name the checkpoint rather than the network
    (`IGNORED_CONFIG_KEYS`); `torch_dtype`/`dtype` count only where they choose the
    engine's dtype (`dtype: auto` on a GPU; on a CPU `auto` means float32);
  - the files the engine reads once at its start beside the weights: the tokenizer, its
    chat template, generation_config.json (its EOS ids and defaults), apart from the
    `transformers_version` they were saved with;
  - the engine options.
Not on a CPU with `enforce_eager: false` (torch.compile): only eager engines were checked.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from cai.backends.base import Backend, Conversation, Generation, SamplingConfig

IGNORED_CONFIG_KEYS = ("_name_or_path", "name_or_path", "transformers_version",
                       "torch_dtype", "dtype")
# read at the engine's start: a swap keeps the first model's copies
START_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
               "chat_template.jinja", "chat_template.json", "generation_config.json")


def _json_without(path: Path, keys: tuple[str, ...]) -> Any:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k not in keys} if isinstance(data, dict) else data


def _local_dir(model: str | None) -> Path | None:
    """The directory a VLLMBackend on `model` loads (`resolve_model`'s answer), without
    pulling or downloading anything; None for a hub id or a registry model not pulled."""
    from cai.models import is_pulled, models_dir, registry_name

    name = registry_name(model)
    if name is not None:
        return models_dir() / name if is_pulled(name) else None
    path = Path(str(model)).expanduser()
    return path.resolve() if path.is_dir() else None


def weights_family(model: str | None, options: dict[str, Any], *,
                   cuda: bool = False) -> tuple[str, str] | None:
    """(family, directory): the family a digest equal for two models one vLLM engine with
    these `options` can serve by swapping weights (module docstring), the directory the
    weights load from; None when `model` cannot be swapped in (no local directory, no
    safetensors weights, a LoRA adapter)."""
    if not cuda and options.get("enforce_eager") is False:
        return None  # torch.compile on a CPU: its graphs may keep the old packed kernels
    path = _local_dir(model)
    if path is None or (path / "adapter_config.json").exists() or \
            not any(path.glob("*.safetensors")) or not (path / "config.json").is_file():
        return None
    config = _json_without(path / "config.json", IGNORED_CONFIG_KEYS)
    dtype = options.get("dtype", "auto")
    if dtype == "auto" and cuda:  # vLLM then runs in the checkpoint's own dtype
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        dtype = raw.get("dtype") or raw.get("torch_dtype")
    files = {}
    for name in START_FILES:
        if (path / name).is_file():
            files[name] = (_json_without(path / name, ("transformers_version",))
                           if name.endswith(".json") else (path / name).read_text(encoding="utf-8"))
    blob = json.dumps({"config": config, "dtype": dtype, "files": files, "options": options},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), str(path)


def weights_stamp(model: str) -> tuple:
    """What says a directory's weights are the ones loaded: each safetensors file's name, size
    and modification time (a later step may write a new checkpoint to the same directory)."""
    path = Path(model)
    if not path.is_dir():
        return ()
    return tuple((f.name, st.st_size, st.st_mtime_ns)
                 for f in sorted(path.glob("*.safetensors")) for st in [f.stat()])


class VLLMWeightsView(Backend):
    """`model` served by a shared `VLLMBackend` (`engine`): every call first makes sure the
    engine holds this model's weights (`engine.load_weights`), under the engine's lock so a
    call never runs on another view's weights. `on_swap(model, seconds)` hears each swap.
    Closing a view leaves the engine running: its owner (the run's EnginePool) closes it."""

    name = "vllm"

    def __init__(self, engine: Any, model: str,
                 on_swap: Callable[[str, float], None] | None = None) -> None:
        self.engine, self.model, self.on_swap = engine, model, on_swap
        self.tokenizer = engine.tokenizer  # the same files: the family says so
        self.precision = getattr(engine, "precision", None)

    def _holding(self) -> Any:
        # the engine's `weights_stamp` (when it keeps one) catches a checkpoint rewritten in
        # the same directory since it was loaded
        stamp = getattr(self.engine, "weights_stamp", None)
        if self.engine.weights != self.model or \
                (stamp is not None and stamp != weights_stamp(self.model)):
            start = time.perf_counter()
            self.engine.load_weights(self.model)
            if self.on_swap is not None:
                self.on_swap(self.model, time.perf_counter() - start)
        return self.engine

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Generation]]:
        with self.engine.lock:
            return self._holding().generate(conversations, sampling)

    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        with self.engine.lock:
            return self._holding().continuation_logprobs(prompts, continuations)

    def prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        with self.engine.lock:
            return self._holding().prompt_logprobs(ids)

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        return self.engine.render_chat(conversation, add_generation_prompt)

    def context_length(self) -> int | None:
        return self.engine.context_length()

    def close(self) -> None:
        """Nothing to release: the engine is shared (class docstring)."""

