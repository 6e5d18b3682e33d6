"""`cai chat`: the smallest end-to-end check that a model answers."""

from __future__ import annotations

import inspect
from typing import Any

import typer

from cai.cli.stage import backend_flag_params, pop_backend_flags

app = typer.Typer()


def chat(
    prompts: list[str] = typer.Argument(..., help="one or more user messages (each answered on its own)"),
    model: str = typer.Option(None, "--model", "-m", help="registry name, directory or hub id"),
    backend: str = typer.Option(None, "--backend", "-b", help="vllm | transformers | openai"),
    system: str = typer.Option(None, help="system prompt"),
    max_tokens: int = typer.Option(256),
    temperature: float = typer.Option(0.0),
    seed: int = typer.Option(0),
    **flags: Any,
) -> None:
    """Print the model's answer to each prompt (all generated in one batch)."""
    from cai.backends import SamplingConfig, load_backend

    options = pop_backend_flags(flags)
    if options and backend != "openai":
        raise typer.BadParameter(f"--{next(iter(options)).replace('_', '-')} is for --backend openai")
    convs = [([{"role": "system", "content": system}] if system else [])
             + [{"role": "user", "content": p}] for p in prompts]
    with load_backend(backend, model, **options) as engine:
        outs = engine.generate(convs, SamplingConfig(max_tokens=max_tokens,
                                                      temperature=temperature, seed=seed))
        for prompt, gens in zip(prompts, outs):
            typer.echo(f"[{engine.name}] > {prompt}\n{gens[0].text.strip()}\n")


# The remote-engine flags (--base-url, --api-key, ...) are the stage commands' own.
_own = [p for p in inspect.signature(chat).parameters.values() if p.kind is not p.VAR_KEYWORD]
chat.__signature__ = inspect.Signature(_own + backend_flag_params())  # type: ignore[attr-defined]
app.command("chat")(chat)
