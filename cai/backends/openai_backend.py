"""OpenAI-compatible backend: any server speaking the OpenAI API (`vllm serve`, `cai serve`).

Requests go out concurrently; each is retried (tenacity, exponential backoff) on the
failures that go away by themselves: connection errors, timeouts, 429 and 5xx. After
the last try the error names the server, the request and how many tries were made.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import openai
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cai.backends.base import Backend, Conversation, Generation, SamplingConfig

T = TypeVar("T")

# 429 is RateLimitError and 5xx is InternalServerError in the openai client.
RETRYABLE = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
)


class ServerError(RuntimeError):
    """The server kept failing after every retry."""


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str = "EMPTY",
        concurrency: int = 16,
        max_attempts: int = 6,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        timeout: float = 120.0,
        tokenizer: str | None = None,
    ) -> None:
        # Retries are ours (tenacity), so the client's own retry loop is off.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.base_url = base_url
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = (backoff_initial, backoff_max)
        self.model = model or self._only_served_model()
        self._tokenizer_ref = tokenizer
        self._tokenizer: Any = None

    def _with_retries(self, what: str, call: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            wait=wait_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
            stop=stop_after_attempt(self.max_attempts),
            reraise=False,
        )
        try:
            return retrying(call)
        except RetryError as e:
            last = e.last_attempt.exception()
            raise ServerError(
                f"{self.base_url}: {what} failed after {self.max_attempts} tries: "
                f"{type(last).__name__}: {last}"
            ) from last

    def _only_served_model(self) -> str:
        models = self._with_retries("listing models", lambda: self.client.models.list().data)
        if not models:
            raise ServerError(f"{self.base_url} serves no model")
        return models[0].id

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Generation]]:
        def one(index: int) -> list[Generation]:
            def call():
                return self.client.chat.completions.create(
                    model=self.model,
                    messages=[dict(m) for m in conversations[index]],
                    **sampling.request_kwargs(),
                    # vLLM (and `cai serve`) return token ids when asked; others ignore it.
                    extra_body={"return_token_ids": True},
                )

            resp = self._with_retries(f"request {index}", call)
            choices = sorted(resp.choices, key=lambda c: c.index)
            return [
                Generation(
                    text=c.message.content or "",
                    token_ids=list(getattr(c, "token_ids", None) or []),
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                )
                for c in choices
            ]

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, range(len(conversations))))

    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """Scores via `/v1/completions` with echo and logprobs (supported by vLLM and `cai serve`);
        the continuation's tokens are those whose text offset lies past the prompt."""

        def one(index: int) -> float:
            prompt, cont = prompts[index], continuations[index]

            def call():
                return self.client.completions.create(
                    model=self.model, prompt=prompt + cont, echo=True, logprobs=0,
                    max_tokens=1, temperature=0.0,
                )

            resp = self._with_retries(f"scoring request {index}", call)
            lp = resp.choices[0].logprobs
            total = 0.0
            end = len(prompt) + len(cont)
            for off, value in zip(lp.text_offset, lp.token_logprobs):
                if len(prompt) <= off < end:
                    total += float(value)
            return total

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, range(len(prompts))))

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
        self.client.close()
