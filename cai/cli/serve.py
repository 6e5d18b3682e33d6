"""`cai serve`: an OpenAI-compatible HTTP endpoint over any local backend."""

from __future__ import annotations

import typer

app = typer.Typer()


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(None, "--model", "-m"),
    backend: str = typer.Option("transformers", "--backend", "-b", help="vllm | transformers"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
) -> None:
    """Serve a local model over an OpenAI-compatible HTTP API (for `--backend openai`)."""
    from cai.backends import load_backend
    from cai.serve import serve

    with load_backend(backend, model) as engine:
        typer.echo(f"serving {engine.model} on http://{host}:{port}/v1")
        serve(engine, host, port)
