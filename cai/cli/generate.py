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
    route: Optional[str] = override(G, "route"),
    route_threshold: Optional[float] = override(G, "route_threshold"),
    revise_benign: Optional[bool] = override(G, "revise_benign", "--revise-benign/--keep-benign"),
    unchanged_threshold: Optional[str] = override(
        G, "unchanged_threshold", help="keep an answer the model judges to need no change at "
        "P >= this (status ok:unchanged; default 0.5); 'off' always revises"),
    min_relevance: Optional[str] = override(
        G, "min_relevance", help="a revision's PMI with its prompt (nats/token) must exceed "
        "this, else degenerate:unresponsive (default 0.0); 'off' skips the check"),
    report: bool = typer.Option(False, "--report",
                                help="print the revision-quality report of the run directory "
                                     "(--out) and exit; nothing is generated"),
    labels: Optional[Path] = typer.Option(
        None, help="with --report: JSONL of {id, judgement: better|same|worse} hand labels"),
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

    if report:
        _print_report(config, out, labels)
        return
    backend_options = backend_flags(base_url, gpu_memory_utilization, backend)
    overrides = dict(
        prompts=prompts, out=out, constitution=constitution, model=model, backend=backend,
        backend_options=backend_options or None, rounds=rounds, samples=samples, limit=limit,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
        few_shot=few_shot, principle_tags_field=principle_tags_field,
        revision_candidates=revision_candidates, route=route, route_threshold=route_threshold,
        revise_benign=revise_benign,
        unchanged_threshold=unchanged_threshold, min_relevance=min_relevance, field=field, messages_field=messages_field,
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


def _print_report(config: Optional[Path], out: Optional[str], labels: Optional[Path]) -> None:
    from cai.generate.checkpoint import RunStore
    from cai.generate.report import build_report, format_report, read_labels

    if out is None and config is not None:
        import yaml

        section = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        out = (section.get("generate", section) or {}).get("out")
    if out is None:
        fail("--report needs the run directory (--out, or --config with generate.out)")
    store = RunStore(out)
    manifest = store.manifest()
    if manifest is None:
        fail(f"{out}: not a `cai generate` run directory (no manifest.json)")
    try:
        judged = read_labels(labels) if labels is not None else None
    except (OSError, ValueError, KeyError) as e:
        fail(f"--labels: {e}")
    tags_field = (manifest.get("config") or {}).get("principle_tags_field")
    typer.echo(format_report(build_report(store.iter_records(), tags_field=tags_field,
                                          labels=judged)))
