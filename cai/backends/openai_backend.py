"""OpenAI-compatible backend: any server speaking the OpenAI API (`vllm serve`, `cai serve`).

Requests go out concurrently; each is retried (tenacity) on the failures that go away by
themselves: connection errors, timeouts, 429 and 5xx. The budget is a duration, not a
count (`retry_for`, default 300 s: a `vllm serve` restart takes 30-70 s), with exponential
backoff and full jitter (waits up to `backoff_max`, 10 s), so a batch job rides through a
server restart. While the server fails, a status line on stderr says so (through tqdm, so
progress bars stay intact): when it started, how long of the budget has gone, when it is
back. Past the budget, `ServerError` names the server, the request, how long and how many
tries, and the last error.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import openai
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from cai.backends.base import Backend, BackendError, Conversation, Generation, SamplingConfig

T = TypeVar("T")

# 429 is RateLimitError and 5xx is InternalServerError in the openai client.
RETRYABLE = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
)
RETRY_FOR_S = 300.0
STATUS_EVERY_S = 10.0  # how often the "still failing" line is repeated


class ServerError(BackendError):
    """The server kept failing for the whole retry budget."""


class _Stopped(Exception):
    """The call was abandoned (the batch failed or was interrupted): stop retrying."""


def _status_line(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class _Outage:
    """Shared by the concurrent requests: one status line per change, not one per request."""

    def __init__(self, where: str, budget: float, report: Callable[[str], None]) -> None:
        self.where, self.budget, self.report = where, budget, report
        self.lock = threading.Lock()
        self.since: float | None = None
        self.last_report = 0.0

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        with self.lock:
            if self.since is None:
                self.since = self.last_report = now
                self.report(f"cai: {self.where} is failing ({type(error).__name__}); "
                            f"retrying for up to {self.budget:.0f} s")
            elif now - self.last_report >= STATUS_EVERY_S:
                self.last_report = now
                self.report(f"cai: {self.where} still failing ({type(error).__name__}), "
                            f"retrying {now - self.since:.0f} s / {self.budget:.0f} s")

    def ok(self) -> None:
        if self.since is None:  # the common case: no lock
            return
        with self.lock:
            if self.since is not None:
                self.report(f"cai: {self.where} answering again after "
                            f"{time.monotonic() - self.since:.0f} s")
                self.since = None


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str = "EMPTY",
        concurrency: int = 16,
        retry_for: float = RETRY_FOR_S,
        max_attempts: int | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        timeout: float = 120.0,
        tokenizer: str | None = None,
        status: Callable[[str], None] | None = None,
    ) -> None:
        """`retry_for`: seconds a request keeps retrying (`max_attempts`, if set, also caps the
        tries); `status`: where outage lines go (default: stderr, through tqdm)."""
        # Retries are ours (tenacity), so the client's own retry loop is off.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.base_url = base_url
        self.concurrency = concurrency
        self.retry_for = retry_for
        self.max_attempts = max_attempts
        self.backoff = (backoff_initial, backoff_max)
        self._outage = _Outage(f"server {base_url}", retry_for, status or _status_line)
        self._closed = threading.Event()
        self.model = model or self._only_served_model()
        self._tokenizer_ref = tokenizer
        self._tokenizer: Any = None

    def _with_retries(self, what: str, call: Callable[[], T],
                      abandon: threading.Event | None = None) -> T:
        def sleep(seconds: float) -> None:
            if self._closed.wait(seconds) or (abandon is not None and abandon.is_set()):
                raise _Stopped(what)

        stop = stop_after_delay(self.retry_for)
        if self.max_attempts is not None:
            stop = stop | stop_after_attempt(self.max_attempts)
        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            wait=wait_random_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
            stop=stop,
            sleep=sleep,
            before_sleep=lambda state: self._outage.failed(state.outcome.exception()),
            reraise=False,
        )
        start = time.monotonic()
        try:
            result = retrying(call)
        except RetryError as e:
            last = e.last_attempt.exception()
            tries = e.last_attempt.attempt_number
            took = time.monotonic() - start
            raise ServerError(
                f"{self.base_url}: {what} failed after {tries} tries over {took:.0f} s "
                f"(retry budget {self.retry_for:g} s, --retry-for): {type(last).__name__}: {last}"
            ) from None
        self._outage.ok()
        return result

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

    def _only_served_model(self) -> str:
        models = self._with_retries("listing models", lambda: self.client.models.list().data)
        if not models:
            raise ServerError(f"{self.base_url} serves no model")
        return models[0].id

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
        """Scores via `/v1/completions` with echo and logprobs (supported by vLLM and `cai serve`);
        the continuation's tokens are those whose text offset lies past the prompt."""

        def one(index: int, abandon: threading.Event) -> float:
            prompt, cont = prompts[index], continuations[index]

            def call():
                return self.client.completions.create(
                    model=self.model, prompt=prompt + cont, echo=True, logprobs=0,
                    max_tokens=1, temperature=0.0,
                )

            resp = self._with_retries(f"scoring request {index}", call, abandon)
            lp = resp.choices[0].logprobs
            total = 0.0
            end = len(prompt) + len(cont)
            for off, value in zip(lp.text_offset, lp.token_logprobs):
                if len(prompt) <= off < end:
                    total += float(value)
            return total

        return self._map(one, len(prompts))

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer when `tokenizer=` names it (loaded on first use), else
        None: the server alone knows how it tokenizes."""
        if self._tokenizer is None and self._tokenizer_ref:
            from transformers import AutoTokenizer

            from cai.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self._tokenizer_ref))
        return self._tokenizer

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        if self.tokenizer is None:
            raise ValueError("the openai backend renders chats only with tokenizer=<model or dir>")
        from cai.backends.text import render_chat

        return render_chat(self.tokenizer, conversation, add_generation_prompt)

    def close(self) -> None:
        self._closed.set()  # requests still retrying give up now
        self.client.close()
