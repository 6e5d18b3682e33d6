"""`cai serve`: an OpenAI-compatible HTTP endpoint over any local backend."""

from __future__ import annotations

import typer

app = typer.Typer()


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(None, "--model", "-m"),
    backend: str = typer.Option("transformers", "--backend", "-b", help="vllm | transformers"),
    host: str = typer.Option("127.0.0.1", help="beyond loopback only with --api-key"),
    port: int = typer.Option(8000),
    api_key: str = typer.Option(None, "--api-key", envvar="CAI_API_KEY", show_envvar=True,
                                help="bearer token every request must carry"),
    insecure: bool = typer.Option(False, "--insecure",
                                  help="serve beyond loopback without a key"),
    gpu_memory_utilization: float = typer.Option(None, help="vllm: KV cache share of memory"),
) -> None:
    """Serve a local model over an OpenAI-compatible HTTP API (for `--backend openai`)."""
    from cai.backends import load_backend
    from cai.cli.common import backend_options
    from cai.config import ConfigError
    from cai.serve import check_bind, serve

    try:
        check_bind(host, api_key, insecure)  # before the minutes an engine takes to load
    except ConfigError as e:
        typer.echo(f"cai serve: {e}", err=True)
        raise typer.Exit(2) from None
    with load_backend(backend, model, **backend_options(None, gpu_memory_utilization,
                                                         backend)) as engine:
        keyed = " (API key required)" if api_key else ""
        typer.echo(f"serving {engine.model} on http://{host}:{port}/v1{keyed}")
        serve(engine, host, port, api_key=api_key, insecure=insecure)
