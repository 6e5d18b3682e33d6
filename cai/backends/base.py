"""The one small interface every generation backend implements.

A backend turns chat conversations into sampled completions, and scores given
continuations of raw prompt text (AI feedback needs log P(" (A)") vs log P(" (B)")).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.schema import Conversation  # [{"role": "system"|"user"|"assistant", "content": ...}]


class BackendError(RuntimeError):
    """A backend failed in a way the caller should see (dead server, bad model, ...)."""


class SamplingConfig(BaseModel):
    """Sampling parameters shared by all backends."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, description="completions per conversation")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = 0
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = Field(False, description="always generate max_tokens (benchmarks)")

    def request_kwargs(self) -> dict:
        """The fields vLLM's SamplingParams and the OpenAI API both name the same way."""
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed, "stop": self.stop or None}


class Generation(BaseModel):
    """One sampled completion."""

    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]


class Backend(ABC):
    """Generate for a batch of conversations; score continuations of prompts."""

    name: str = "base"
    model: str  # what the backend was built from (resolved path or server model id)
    # The Hugging Face tokenizer the engine reads prompts with; None where there is none
    # (the openai backend without `tokenizer=`): then prompts cannot be counted.
    tokenizer: Any = None
    # The dtype the engine computes in and why, for people ("fp32: vLLM on a CPU ..."); the
    # stages' summaries carry it as `engine_precision`. None where it is not known (a server).
    precision: str | None = None

    @abstractmethod
    def generate(
        self, conversations: list[Conversation], sampling: SamplingConfig
    ) -> list[list[Generation]]:
        """Return `sampling.n` generations for each conversation, in input order.

        The whole batch is handed to the engine at once; callers never loop per prompt.
        """

    @abstractmethod
    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """Sum of token log-probabilities of `continuations[i]` following raw text `prompts[i]`.

        Prompt and continuation are tokenized separately (no special tokens added) and
        concatenated, so the scored tokens are exactly the continuation's own tokens and
        every local backend scores the same token sequence.
        """

    @abstractmethod
    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        """The conversation as raw text through the tokenizer's chat template."""

    def count_tokens(self, conversation: Conversation) -> int | None:
        """Tokens the model reads for `conversation` as a prompt (chat template and
        generation prompt included), counted as the engine counts them; None without a
        tokenizer. Whether a request fits: `cai.backends.context.context_fit`."""
        if self.tokenizer is None:
            return None
        from cai.backends.text import encode

        return len(encode(self.tokenizer, self.render_chat(conversation)))

    def context_length(self) -> int | None:
        """The model's context window in tokens, where the backend knows it (None: unknown;
        callers then send requests unchecked and the server says what is too long)."""
        return None

    def close(self) -> None:
        """Release the engine (processes, memory)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
