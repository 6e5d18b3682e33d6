"""Helpers every backend shares: chat rendering, tokenization for scoring, stop handling."""

from __future__ import annotations

from typing import Any

from cai.schema import Conversation


def render_chat(tokenizer: Any, conversation: Conversation, add_generation_prompt: bool = True) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use a chat/instruct model")
    return tokenizer.apply_chat_template(
        [dict(m) for m in conversation], tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of raw text; the chat template already wrote any special tokens as text."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def scoring_ids(tokenizer: Any, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """(prompt ids, continuation ids), tokenized separately so the scored tokens never
    depend on how the tokenizer would merge across the boundary."""
    return encode(tokenizer, prompt), encode(tokenizer, continuation)


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Truncate at the first stop string; report whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
