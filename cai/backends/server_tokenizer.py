"""The served model's tokenizer, asked over HTTP: vLLM's `/tokenize` and `/detokenize`
(`cai serve` has the same endpoints, same request and response shapes).

It answers the few calls cai makes of a Hugging Face tokenizer (`cai.backends.text`:
`apply_chat_template(..., tokenize=False)`, `tokenizer(text, add_special_tokens=False)`,
`decode`), so every stage counts and renders through the server exactly as it would
through a local tokenizer. A chat is rendered as the server renders it: `/tokenize` with
`messages`, then `/detokenize` of those ids. Answers are cached: a labeling run renders
the same few-shot prefix thousands of times.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

PostFn = Callable[[str, dict], dict]  # (path from the server root, JSON body) -> JSON answer


class ServerTokenizer:
    chat_template = "(rendered by the server)"  # truthy: `render_chat` may proceed

    def __init__(self, post: PostFn, model: str) -> None:
        self._post, self.model = post, model
        self._lock = threading.Lock()
        self._texts: dict[tuple[str, bool], list[int]] = {}
        self._chats: dict[tuple, str] = {}
        self.max_model_len: int | None = None

    @classmethod
    def probe(cls, post: PostFn, model: str) -> "ServerTokenizer":
        """The server's tokenizer if it offers `/tokenize` with messages; raises otherwise."""
        tok = cls(post, model)
        answer = post("/tokenize", {"model": model, "messages": [{"role": "user", "content": "x"}],
                                    "add_generation_prompt": True})
        if not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
            raise ValueError(f"/tokenize answered {str(answer)[:100]!r}, not vLLM's shape")
        tok.max_model_len = answer.get("max_model_len")
        return tok

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> dict[str, list[int]]:
        key = (text, add_special_tokens)
        ids = self._texts.get(key)
        if ids is None:
            ids = self._post("/tokenize", {"model": self.model, "prompt": text,
                                           "add_special_tokens": add_special_tokens})["tokens"]
            with self._lock:
                self._texts[key] = ids
        return {"input_ids": list(ids)}

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return self._post("/tokenize", {"model": self.model, "messages": messages,
                                        "add_generation_prompt": add_generation_prompt})["tokens"]

    def decode(self, ids: list[int], **_: Any) -> str:
        return self._post("/detokenize", {"model": self.model, "tokens": list(ids)})["prompt"]

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True, **_: Any) -> str | list[int]:
        if tokenize:
            return self.chat_ids(messages, add_generation_prompt)
        key = (tuple((m["role"], m["content"]) for m in messages), add_generation_prompt)
        text = self._chats.get(key)
        if text is None:
            text = self.decode(self.chat_ids(messages, add_generation_prompt))
            with self._lock:
                self._chats[key] = text
        return text
