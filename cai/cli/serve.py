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
    gpu_memory_utilization: float = typer.Option(None, help="vllm: KV cache share of memory"),
) -> None:
    """Serve a local model over an OpenAI-compatible HTTP API (for `--backend openai`)."""
    from cai.backends import load_backend
    from cai.cli.common import backend_options
    from cai.serve import serve

    with load_backend(backend, model, **backend_options(None, gpu_memory_utilization,
                                                         backend)) as engine:
        typer.echo(f"serving {engine.model} on http://{host}:{port}/v1")
        serve(engine, host, port)
