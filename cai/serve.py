"""A small OpenAI-compatible endpoint over any local backend (`cai serve`).

For production serving use `vllm serve`; this exists so the `openai` backend can be
used and tested against a real HTTP server anywhere, including machines without vLLM.
Requests are served one at a time (local backends are not thread-safe). Besides chat
completions and scoring completions it serves vLLM's `/tokenize` and `/detokenize` (same
request and response shapes), so clients render chats and count tokens as the server does.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.backends.base import Backend, SamplingConfig
from cai.backends.text import encode, render_chat
from cai.config import ConfigError
from cai.schema import Message, check_conversation


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 256
    seed: int | None = None
    stop: str | list[str] | None = None
    return_token_ids: bool = False

    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list[Message]) -> list[Message]:
        check_conversation(messages)  # a system turn only first (a 422 otherwise)
        return messages


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | list[int]  # text, or token ids (what the openai backend sends to score)
    echo: bool = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    temperature: float = 1.0


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a chat (`messages`) or raw text (`prompt`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] | None = None
    add_generation_prompt: bool = True
    prompt: str | None = None
    add_special_tokens: bool = False  # vLLM's default is True for text; cai never wants BOS twice


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a hostname: it may resolve to anything
        return False


def check_bind(host: str, api_key: str | None, insecure: bool = False) -> None:
    """Refuse to serve beyond loopback without a key: anyone who reaches the port could use
    the engine otherwise."""
    if not is_loopback(host) and not api_key and not insecure:
        raise ConfigError(f"--host {host} would serve beyond this machine without a key: give "
                          "--api-key KEY (or CAI_API_KEY), or --insecure to serve openly")


def bearer_check(api_key: str):
    """A FastAPI dependency: 401 unless `Authorization: Bearer <api_key>`; compared in
    constant time so the key cannot be guessed byte by byte from response times."""
    expected = api_key.encode()

    def check(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(401, "missing or wrong API key",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


def build_app(backend: Backend, served_name: str | None = None,
              api_key: str | None = None) -> FastAPI:
    """`api_key`: when given, every route asks for it as a bearer token."""
    app = FastAPI(title="cai OpenAI-compatible endpoint",
                  dependencies=[Depends(bearer_check(api_key))] if api_key else [])
    name = served_name or backend.model
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": name, "object": "model", "owned_by": "cai",
                "max_model_len": backend.context_length()}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict[str, Any]:
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        sampling = SamplingConfig(n=req.n, temperature=req.temperature, top_p=req.top_p,
                                  max_tokens=req.max_tokens or 256, seed=req.seed, stop=stop)
        with lock:
            gens = backend.generate([[m.model_dump() for m in req.messages]], sampling)[0]
        choices = []
        for i, g in enumerate(gens):
            choice: dict[str, Any] = {"index": i, "finish_reason": g.finish_reason,
                                      "message": {"role": "assistant", "content": g.text}}
            if req.return_token_ids:
                choice["token_ids"] = g.token_ids
            choices.append(choice)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": name, "choices": choices,
            "usage": {"completion_tokens": sum(len(g.token_ids) for g in gens)},
        }

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> dict[str, Any]:
        # Only the scoring form (echo + logprobs) is served: that is what AI feedback needs.
        if not (req.echo and req.logprobs is not None):
            raise HTTPException(400, "this endpoint serves only echo=true with logprobs (scoring)")
        scorer = getattr(backend, "prompt_logprobs", None)
        if scorer is None:
            raise HTTPException(400, f"backend {backend.name!r} cannot score prompts; use transformers")
        ids = encode(backend.tokenizer, req.prompt) if isinstance(req.prompt, str) else req.prompt
        with lock:
            values = scorer(ids)
        tokens = [backend.tokenizer.decode([t]) for t in ids]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        text = "".join(tokens)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "text": text, "finish_reason": "length",
                         "logprobs": {"tokens": tokens, "token_logprobs": values,
                                      "text_offset": offsets, "top_logprobs": None}}],
        }

    @app.post("/tokenize")
    def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        if req.messages is not None:
            text = render_chat(backend.tokenizer, [m.model_dump() for m in req.messages],
                               req.add_generation_prompt)
            ids = encode(backend.tokenizer, text)
        elif req.prompt is not None:
            ids = backend.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        else:
            raise HTTPException(400, "give `messages` or `prompt`")
        return {"tokens": ids, "count": len(ids), "max_model_len": backend.context_length()}

    @app.post("/detokenize")
    def detokenize(req: DetokenizeRequest) -> dict[str, Any]:
        return {"prompt": backend.tokenizer.decode(req.tokens)}

    return app


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 8000, *,
          api_key: str | None = None, insecure: bool = False) -> None:
    import uvicorn

    check_bind(host, api_key, insecure)
    uvicorn.run(build_app(backend, api_key=api_key), host=host, port=port, log_level="warning")
