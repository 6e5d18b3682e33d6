"""Generation backends behind one interface (see `base.Backend`)."""

from __future__ import annotations

import importlib.util
from typing import Any

from cai.backends.base import Backend, BackendError, Conversation, Generation, SamplingConfig

BACKENDS = ("vllm", "transformers", "openai")


def default_backend() -> str:
    """vLLM when importable, else transformers."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def load_backend(name: str | None = None, model: str | None = None, **options: Any) -> Backend:
    """Build a backend by name. `model` is a registry name, directory or hub id
    (for `openai`: the served model id; pass `base_url=`)."""
    name = name or default_backend()
    if name == "vllm":
        from cai.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, **options)
    if name == "transformers":
        from cai.backends.hf_backend import TransformersBackend

        return TransformersBackend(model, **options)
    if name == "openai":
        from cai.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(model, **options)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["Backend", "BackendError", "Conversation", "Generation", "SamplingConfig",
           "BACKENDS", "default_backend", "load_backend"]
