"""`cai run PIPELINE.yaml`: every stage of a pipeline file, skipping what is up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import EXIT_USAGE, fail

app = typer.Typer()


@app.command("run")
def run_cmd(
    pipeline_path: Path = typer.Argument(..., help="pipeline YAML: run:, prompts: and one "
                                                   "section per stage"),
    from_stage: Optional[str] = typer.Option(None, "--from", help="run this stage (or roundK/stage) "
                                             "and every one after it, even if up to date"),
    only: Optional[str] = typer.Option(None, "--only", help="run only this stage (each round's, or "
                                       "roundK/stage), even if up to date"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show engine and library logs "
                                 "here instead of in <run>/logs/engine.log"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the file and say what would run"),
) -> None:
    """Run a pipeline: generate -> sft -> sample -> label -> rm -> ppo -> eval, each stage a
    section of the file (leave a section out to leave the stage out). Each stage writes
    <run>/<stage>/ and its stage.json; a rerun skips the stages whose config and inputs are
    unchanged, and reruns a changed stage and everything downstream of it."""
    run_file(pipeline_path, from_stage=from_stage, only=only, verbose=verbose, dry_run=dry_run)


def run_file(pipeline_path: Path, *, from_stage: Optional[str] = None, only: Optional[str] = None,
             verbose: bool = False, dry_run: bool = False) -> None:
    """`cai run`'s work, shared with `cai demo`."""
    import contextlib

    from cai.pipeline import (PipelineError, SelectionError, StageFailed, builtin_stages,
                              load_pipeline, plan, run_pipeline, select)
    from cai.pipeline.logs import append, engine_logs_to_file
    from cai.pipeline.manifest import read_manifest, stale_reasons
    from cai.pipeline.runner import _inputs
    from cai.pipeline.summary import format_summary

    stages = builtin_stages()
    try:
        pipeline = load_pipeline(pipeline_path, [s.name for s in stages])
        steps = plan(pipeline, stages, typer.echo)
        select(steps, from_stage, only)
    except PipelineError as e:
        typer.echo(str(e), err=True)
        fail(f"{pipeline_path}: {len(e.errors)} error(s)")
    except SelectionError as e:
        fail(str(e), EXIT_USAGE)

    run_dir = pipeline.run.out_dir()
    log_file = run_dir / "logs" / "engine.log"
    left_out = [s.name for s in stages if s.name not in pipeline.sections]
    typer.echo(f"cai run {pipeline.run.name}: {len(steps)} steps -> {run_dir}"
               + (f" (left out: {', '.join(left_out)})" if left_out else "")
               + ("" if verbose else f"; engine logs: {log_file}"))
    if dry_run:
        manifests = {s.key: read_manifest(s.dir) or {} for s in steps}
        will_run: set[str] = set()
        for step in steps:
            why = stale_reasons(manifests[step.key] or None, step.config_hash,
                                _inputs(step, manifests), step.dir)
            # a step whose upstream reruns may get new inputs (unless that writes the same bytes)
            follows = [k for k in step.used if k in will_run]
            if not why and follows:
                why = [f"probably: follows {', '.join(follows)}"]
            if why:
                will_run.add(step.key)
            typer.echo(f"  {step.key:<16} {'; '.join(why) if why else 'up to date'}")
        return

    quiet = contextlib.nullcontext() if verbose else engine_logs_to_file(log_file)
    log = None if verbose else (lambda text: append(log_file, text))
    from cai.interrupt import Interrupted, catch_signals, exit_code
    from cai.progress import above_bars

    results = []
    try:
        with quiet, catch_signals():
            # the engine pool's lines (a weights swap) can come while a stage's bar is open
            results = run_pipeline(pipeline, stages, from_=from_stage, only=only,
                                   echo=above_bars, log=log)
    except SelectionError as e:
        fail(str(e), EXIT_USAGE)
    except StageFailed as e:
        if isinstance(e.error, Interrupted):  # Ctrl-C or SIGTERM: no traceback, say how to go on
            typer.echo(f"\ncai run: stopped by {e.error} during {e.step.key}; finished stages "
                       f"are kept (and a stopped generate resumes from its last chunk): rerun "
                       f"`cai run {pipeline_path}` to go on", err=True)
            raise typer.Exit(exit_code(e.error.signum)) from None
        typer.echo(f"error: {e}", err=True)
        if not verbose:
            typer.echo(f"  traceback and engine output: {log_file}", err=True)
        typer.echo(f"  finished stages are kept; rerun `cai run {pipeline_path}` to go on",
                   err=True)
        raise typer.Exit(1) from None
    typer.echo("")
    typer.echo(format_summary(steps, {r.key: r.action for r in results}, run_dir))
