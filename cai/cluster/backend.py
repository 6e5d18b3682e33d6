"""A cai `Backend` whose batched calls are split over Ray engine actors, for the stages that
have no checkpoint chunks of their own: `sample`, `score --judge` and `eval policy` hand one
batch to `generate` / `continuation_logprobs`; here that batch becomes chunks on
`run_chunks`, and the answers come back in input order.

    backend = load_engine(config)   # RayBackend when config.ray is set, else load_backend

Prompts are rendered and counted here, on the driver, with the model's tokenizer (so the
driver needs the tokenizer files too: a hub id or a shared path). Only the engine calls go
to the actors. Greedy results equal a local run's; sampled ones equal it where the engine
seeds each request (vLLM), not where it seeds each call (transformers: a sub-batch draws
from its own stream).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from cai.backends import Backend, load_backend
from cai.backends.base import Conversation, Generation, SamplingConfig
from cai.cluster.chunks import placement, run_chunks, start_actors
from cai.config import RayConfig

CHUNKS_PER_REPLICA = 4  # enough to keep every replica busy while one chunk is slow


def load_engine(config: Any, model: str | None = None) -> Backend:
    """The stage's engine: on Ray when `config.ray` is set, else in this process.
    `model`: another model than `config.model` (eval's reference and judge)."""
    model = model if model is not None else config.model
    if getattr(config, "ray", None) is not None:
        return RayBackend(config.backend, model, config.backend_options, config.ray)
    return load_backend(config.backend, model, **config.backend_options)


def _generate(backend: Backend, conversations: list[Conversation], *,
              sampling: SamplingConfig) -> list[list[Generation]]:
    return backend.generate(conversations, sampling)


def _logprobs(backend: Backend, chunk: tuple[list[str], list[str]]) -> list[float]:
    return backend.continuation_logprobs(*chunk)


def _describe(backend: Backend, _: Any) -> dict[str, Any]:
    return {"name": backend.name, "model": backend.model,
            "context_length": backend.context_length(),
            "has_tokenizer": backend.tokenizer is not None,
            "precision": getattr(backend, "precision", None)}


class RayBackend(Backend):
    """`ray_config.replicas` actors, each with one `name` engine on `model`."""

    def __init__(self, name: str | None, model: str | None, options: dict[str, Any],
                 ray_config: RayConfig) -> None:
        self.ray_config = ray_config
        self.actors = start_actors((name, model, options), ray_config)
        try:
            self.where = placement(self.actors)
            info = self._map(_describe, [None])[0]
            self.name, self.model = info["name"], info["model"]
            self._context_length = info["context_length"]
            self.precision = info["precision"]
            self.tokenizer = self._load_tokenizer(options) if info["has_tokenizer"] else None
        except BaseException:
            self.close()
            raise

    def _load_tokenizer(self, options: dict[str, Any]) -> Any:
        from transformers import AutoTokenizer

        from cai.models import resolve_model

        source = options.get("tokenizer") or self.model
        return AutoTokenizer.from_pretrained(
            resolve_model(source), trust_remote_code=options.get("trust_remote_code", False))

    def _map(self, fn: Any, chunks: list[Any]) -> list[Any]:
        done = dict(run_chunks(fn, chunks, engine=(None, None, {}), ray_config=self.ray_config,
                               actors=self.actors))
        return [done[i] for i in range(len(chunks))]

    def _split(self, n: int) -> list[slice]:
        size = max(1, -(-n // (len(self.actors) * CHUNKS_PER_REPLICA)))
        return [slice(i, i + size) for i in range(0, n, size)]

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig
                 ) -> list[list[Generation]]:
        parts = self._map(partial(_generate, sampling=sampling),
                          [conversations[s] for s in self._split(len(conversations))])
        return [g for part in parts for g in part]

    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations must have the same length")
        # split by distinct prompt, so a prompt's continuations share one actor (its cache)
        order = list(dict.fromkeys(prompts))
        groups = [set(order[s]) for s in self._split(len(order))]
        idx = [[i for i, p in enumerate(prompts) if p in g] for g in groups]
        parts = self._map(_logprobs, [([prompts[i] for i in ix], [continuations[i] for i in ix])
                                      for ix in idx])
        out = [0.0] * len(prompts)
        for ix, part in zip(idx, parts):
            for i, lp in zip(ix, part):
                out[i] = lp
        return out

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        if self.tokenizer is None:
            raise ValueError(f"the {self.name} engine has no tokenizer to render chats with")
        from cai.backends.text import render_chat

        return render_chat(self.tokenizer, conversation, add_generation_prompt)

    def context_length(self) -> int | None:
        return self._context_length

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
