"""`cai generate`: critique -> revision data from prompts and a constitution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import backend_options as backend_flags, fail

app = typer.Typer()


@app.command("generate")
def generate(
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="pipeline YAML with a `generate:` section"),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p",
                                          help="JSONL/CSV/Parquet/txt file or datasets dir"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="run directory"),
    constitution: Optional[str] = typer.Option(None, "--constitution",
                                               help="shipped name or YAML path (default harmless)"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b",
                                          help="vllm | transformers | openai"),
    base_url: Optional[str] = typer.Option(None, help="for --backend openai"),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, help="vLLM: share of GPU memory (on CPU: of RAM) for the KV cache"),
    rounds: Optional[int] = typer.Option(None, help="critique-revision rounds, 1-4"),
    samples: Optional[int] = typer.Option(None, help="responses per prompt"),
    limit: Optional[int] = typer.Option(None, help="first N accepted prompts"),
    max_tokens: Optional[int] = typer.Option(None, help="per generated turn"),
    temperature: Optional[float] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    few_shot: Optional[bool] = typer.Option(None, "--few-shot/--no-few-shot",
                                            help="show the constitution's worked examples"),
    principle_tags_field: Optional[str] = typer.Option(
        None, help="route principles: draw only those sharing a tag with this prompt field"),
    revision_candidates: Optional[int] = typer.Option(
        None, help="revisions sampled per request; the first passing the checks is kept"),
    field: Optional[str] = typer.Option(None, help="prompt text field (default prompt)"),
    messages_field: Optional[str] = typer.Option(None, help="message-list field (default messages)"),
    id_field: Optional[str] = typer.Option(None, help="id field (default id)"),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="reject longer prompts"),
    chunk_size: Optional[int] = typer.Option(None, help="records per chunk/shard (default 256)"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Respond, critique and revise at batch scale; write revisions, SFT data and
    preference pairs. Rerun the same command to resume after a crash."""
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
        summary = run_generate(cfg)
    except (ConfigError, RunConfigError, RunLockedError, DataError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
