"""`cai generate`: critique -> revision data from prompts and a constitution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import fail, interruptible
from cai.cli.stage import StageArgs, stage_command
from cai.generate.config import GenerateConfig

app = typer.Typer()


@stage_command(
    app, "generate", [GenerateConfig], section="generate", marker_key="prompts",
    short={"config": "-c", "prompts": "-p", "out": "-o", "model": "-m", "backend": "-b"},
    text=("unchanged_threshold", "min_relevance"),  # 'off' turns the step off
    skip=("response", "critique", "revision"),  # per-stage sampling: YAML only
    extras={
        "report": (bool, typer.Option(False, "--report",
                                      help="print the revision-quality report of the run "
                                           "directory (--out) and exit; nothing is generated")),
        "labels": (Optional[Path], typer.Option(
            None, help="with --report: JSONL of {id, judgement: better|same|worse} hand labels")),
        "as_json": (bool, typer.Option(False, "--json",
                                       help="print the summary as JSON on stdout")),
    })
def generate(args: StageArgs) -> None:
    """Respond, critique and revise at batch scale; write revisions, SFT data and
    preference pairs. Rerun the same command to resume after a crash, Ctrl-C or SIGTERM."""
    from cai.generate.checkpoint import RunConfigError, RunLockedError
    from cai.generate.config import ConfigError
    from cai.generate.run import run_generate
    from cai.io import DataError

    if args.extras["report"]:
        _print_report(args.path, args.overrides.get("out"), args.extras["labels"])
        return
    cfg = args.config(GenerateConfig)
    try:
        with interruptible("generate"):
            summary = run_generate(cfg)
    except (ConfigError, RunConfigError, RunLockedError, DataError) as e:
        fail(str(e))
    if args.extras["as_json"]:
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
