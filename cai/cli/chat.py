"""`cai chat`: the smallest end-to-end check that a model answers."""

from __future__ import annotations

import typer

from cai.cli.common import backend_options

app = typer.Typer()


@app.command("chat")
def chat(
    prompts: list[str] = typer.Argument(..., help="one or more user messages (each answered on its own)"),
    model: str = typer.Option(None, "--model", "-m", help="registry name, directory or hub id"),
    backend: str = typer.Option(None, "--backend", "-b", help="vllm | transformers | openai"),
    base_url: str = typer.Option(None, help="for --backend openai"),
    system: str = typer.Option(None, help="system prompt"),
    max_tokens: int = typer.Option(256),
    temperature: float = typer.Option(0.0),
    seed: int = typer.Option(0),
) -> None:
    """Print the model's answer to each prompt (all generated in one batch)."""
    from cai.backends import SamplingConfig, load_backend

    options = backend_options(base_url, backend=backend)
    convs = [([{"role": "system", "content": system}] if system else [])
             + [{"role": "user", "content": p}] for p in prompts]
    with load_backend(backend, model, **options) as engine:
        outs = engine.generate(convs, SamplingConfig(max_tokens=max_tokens,
                                                      temperature=temperature, seed=seed))
        for prompt, gens in zip(prompts, outs):
            typer.echo(f"[{engine.name}] > {prompt}\n{gens[0].text.strip()}\n")
