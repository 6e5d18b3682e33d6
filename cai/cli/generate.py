"""`cai generate`: critique -> revision data from prompts and a constitution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import (RETRY_FOR_HELP, backend_options as backend_flags, fail,
                             interruptible, override)
from cai.generate.config import GenerateConfig as G

app = typer.Typer()


@app.command("generate")
def generate(
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="pipeline YAML with a `generate:` section"),
    prompts: Optional[str] = override(G, "prompts", "--prompts", "-p"),
    out: Optional[str] = override(G, "out", "--out", "-o"),
    constitution: Optional[str] = override(G, "constitution", "--constitution"),
    model: Optional[str] = override(G, "model", "--model", "-m"),
    backend: Optional[str] = override(G, "backend", "--backend", "-b"),
    base_url: Optional[str] = typer.Option(None, help="for --backend openai"),
    retry_for: Optional[float] = typer.Option(None, min=0.0, help=RETRY_FOR_HELP + " (default 300)"),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, help="vLLM: share of GPU memory (on CPU: of RAM) for the KV cache"),
    rounds: Optional[int] = override(G, "rounds"),
    samples: Optional[int] = override(G, "samples"),
    limit: Optional[int] = override(G, "limit"),
    max_tokens: Optional[int] = override(G, "max_tokens"),
    temperature: Optional[float] = override(G, "temperature"),
    top_p: Optional[float] = override(G, "top_p"),
    seed: Optional[int] = override(G, "seed"),
    few_shot: Optional[bool] = override(G, "few_shot", "--few-shot/--no-few-shot"),
    principle_tags_field: Optional[str] = override(G, "principle_tags_field"),
    revision_candidates: Optional[int] = override(G, "revision_candidates"),
    field: Optional[str] = override(G, "field"),
    messages_field: Optional[str] = override(G, "messages_field"),
    id_field: Optional[str] = override(G, "id_field"),
    max_prompt_tokens: Optional[int] = override(G, "max_prompt_tokens"),
    chunk_size: Optional[int] = override(G, "chunk_size"),
    progress: Optional[bool] = override(G, "progress", "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Respond, critique and revise at batch scale; write revisions, SFT data and
    preference pairs. Rerun the same command to resume after a crash, Ctrl-C or SIGTERM."""
    from cai.generate.checkpoint import RunConfigError, RunLockedError
    from cai.generate.config import ConfigError, load_config
    from cai.generate.run import run_generate
    from cai.io import DataError

    backend_options = backend_flags(base_url, gpu_memory_utilization, backend)
    overrides = dict(
        prompts=prompts, out=out, constitution=constitution, model=model, backend=backend,
        backend_options=backend_options or None, rounds=rounds, samples=samples, limit=limit,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
        few_shot=few_shot, principle_tags_field=principle_tags_field,
        revision_candidates=revision_candidates, field=field, messages_field=messages_field,
        id_field=id_field, max_prompt_tokens=max_prompt_tokens, chunk_size=chunk_size, progress=progress)
    try:
        cfg = load_config(config, overrides)
        if retry_for is not None:
            if cfg.backend_name() != "openai":
                fail("--retry-for applies to --backend openai", 2)
            cfg.backend_options["retry_for"] = retry_for
        with interruptible("generate"):
            summary = run_generate(cfg)
    except (ConfigError, RunConfigError, RunLockedError, DataError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
