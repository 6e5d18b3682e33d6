"""OpenAI-compatible backend: any server speaking the OpenAI API (`vllm serve`, `cai serve`).

Requests go out concurrently, at most `max_concurrency` at a time (default 16: vLLM's
server does not say how many sequences it batches, and 16 keeps a small server busy without
flooding it). How requests wait on a slow or failing server: `cai.backends.retries`.

Chats are rendered and prompts counted by the served model's own tokenizer, found in this
order: `tokenizer=` (a registry name, directory or hub id); the server's `/tokenize` (vLLM,
`cai serve`); the served model id when it resolves locally (`cai.models.resolve_model`).
Scoring sends token ids (prompt and continuation tokenized separately, as every backend
does) to `/v1/completions` with `echo` and `logprobs`, and sums the continuation's prompt
log-probs, so a remote engine scores the same tokens as a local one.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import openai

from cai.backends.base import Backend, Conversation, Generation, SamplingConfig
from cai.backends.retries import (  # noqa: F401 - ServerError, ServerSlow are this backend's errors
    REQUEST_TIMEOUT_S,
    RETRY_FOR_S,
    ServerError,
    ServerSlow,
    ServerWatch,
    Stopped,
    call_with_retries,
)

T = TypeVar("T")
MAX_CONCURRENCY = 16
NO_TOKENIZER = ("the openai backend needs the served model's tokenizer to render chats and "
                "count tokens; the server at {url} has no /tokenize ({why}) and the model id "
                "{model!r} is not a local model: pass --tokenizer <registry name, directory or "
                "hub id> (backend_options: {{tokenizer: ...}})")


def _status_line(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        max_concurrency: int = MAX_CONCURRENCY,
        retry_for: float = RETRY_FOR_S,
        request_timeout: float = REQUEST_TIMEOUT_S,
        max_attempts: int | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        tokenizer: str | None = None,
        status: Callable[[str], None] | None = None,
    ) -> None:
        """`api_key`: default $OPENAI_API_KEY, else none; `retry_for`, `request_timeout`:
        `cai.backends.retries`; `max_attempts`, if set, also caps the tries; `status`: where
        outage lines go (default: stderr, through tqdm)."""
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # Retries are ours, so the client's own retry loop is off.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                    timeout=request_timeout)
        self.base_url = base_url.rstrip("/")
        # vLLM serves /tokenize and /detokenize beside /v1, at the server's root.
        self.root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self.concurrency = max_concurrency
        self.retry_for, self.request_timeout = retry_for, request_timeout
        self.max_attempts = max_attempts
        self.backoff = (backoff_initial, backoff_max)
        self._watch = ServerWatch(f"server {base_url}", retry_for, status or _status_line)
        self._closed = threading.Event()
        self._served: list[dict] | None = None  # the model cards, listed when first needed
        self.model = model or self._served_models()[0]["id"]
        self._tokenizer_ref = tokenizer
        self._tokenizer: Any = None
        self._no_tokenizer: str | None = None  # why there is none, once known

    def _with_retries(self, what: str, call: Callable[[], T],
                      abandon: threading.Event | None = None) -> T:
        def sleep(seconds: float) -> None:
            if self._closed.wait(seconds) or (abandon is not None and abandon.is_set()):
                raise Stopped(what)

        return call_with_retries(call, what=what, where=self.base_url, watch=self._watch,
                                 retry_for=self.retry_for, request_timeout=self.request_timeout,
                                 max_attempts=self.max_attempts, backoff=self.backoff, sleep=sleep)

    def _map(self, one: Callable[[int, threading.Event], T], n: int) -> list[T]:
        """`one(i)` for i < n on the pool, in order. When one request fails for good or the
        caller is interrupted, the others stop retrying and nothing waits for them."""
        abandon = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            return list(pool.map(lambda i: one(i, abandon), range(n)))
        except BaseException:
            abandon.set()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _served_models(self) -> list[dict]:
        if self._served is None:
            data = self._with_retries("listing models",
                                      lambda: self.client.get("/models", cast_to=object))
            models = data.get("data") if isinstance(data, dict) else None
            if not models:
                raise ServerError(f"{self.base_url} serves no model")
            self._served = models
        return self._served

    def _post_root(self, path: str, body: dict) -> Any:
        return self._with_retries(path, lambda: self.client.post(self.root + path, body=body,
                                                                 cast_to=object))

    def context_length(self) -> int | None:
        """vLLM's model card says `max_model_len`; so does its /tokenize."""
        for card in self._served_models():
            if card.get("id") == self.model and card.get("max_model_len"):
                return int(card["max_model_len"])
        return getattr(self.tokenizer, "max_model_len", None)

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Generation]]:
        def one(index: int, abandon: threading.Event) -> list[Generation]:
            def call():
                return self.client.chat.completions.create(
                    model=self.model,
                    messages=[dict(m) for m in conversations[index]],
                    **sampling.request_kwargs(),
                    # vLLM (and `cai serve`) return token ids when asked; others ignore it.
                    extra_body={"return_token_ids": True},
                )

            resp = self._with_retries(f"request {index}", call, abandon)
            choices = sorted(resp.choices, key=lambda c: c.index)
            return [
                Generation(
                    text=c.message.content or "",
                    token_ids=list(getattr(c, "token_ids", None) or []),
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                )
                for c in choices
            ]

        return self._map(one, len(conversations))

    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """The prompt log-probs `/v1/completions` echoes for prompt + continuation ids
        (supported by vLLM and `cai serve`), summed over the continuation's tokens."""
        from cai.backends.text import scoring_ids

        tok = self._require_tokenizer()

        def one(index: int, abandon: threading.Event) -> float:
            p, c = scoring_ids(tok, prompts[index], continuations[index])

            def call():
                return self.client.completions.create(
                    model=self.model, prompt=p + c, echo=True, logprobs=0,
                    max_tokens=1, temperature=0.0)

            resp = self._with_retries(f"scoring request {index}", call, abandon)
            values = resp.choices[0].logprobs.token_logprobs
            return sum(float(v) for v in values[len(p):len(p) + len(c)])

        return self._map(one, len(prompts))

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer (found on first use; see the module's docstring), or
        None when there is none: then chats cannot be rendered nor prompts counted."""
        if self._tokenizer is None and self._no_tokenizer is None:
            self._tokenizer = self._find_tokenizer()
        return self._tokenizer

    def _find_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from cai.backends.server_tokenizer import ServerTokenizer
        from cai.models import ModelError, resolve_model

        if self._tokenizer_ref:
            return AutoTokenizer.from_pretrained(resolve_model(self._tokenizer_ref))
        try:
            return ServerTokenizer.probe(self._post_root, self.model)
        except (openai.APIStatusError, ValueError) as e:  # 404: no /tokenize; 400: no chats
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        try:
            return AutoTokenizer.from_pretrained(resolve_model(self.model, pull_missing=False))
        except (ModelError, OSError, ValueError):
            self._no_tokenizer = NO_TOKENIZER.format(url=self.root, why=why, model=self.model)
            return None

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(self._no_tokenizer)
        return self.tokenizer

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        from cai.backends.text import render_chat

        return render_chat(self._require_tokenizer(), conversation, add_generation_prompt)

    def close(self) -> None:
        self._closed.set()  # requests still retrying give up now
        self.client.close()
