"""`cai demo`: the pipeline so far on the embedded model, through one engine: respond →
critique → revise → pair (`run_generate`), then label the pairs with AI feedback
(`run_label`). Only the printing is the demo's own."""

from __future__ import annotations

import textwrap
from typing import Optional

import typer

from cai.cli.common import fail


def _show(title: str, text: str, width: int = 96) -> None:
    body = textwrap.shorten(" ".join(text.split()), 420, placeholder=" ...")
    typer.echo(f"  {title}:\n" + textwrap.indent(textwrap.fill(body, width - 6), "      "))


app = typer.Typer()


@app.command("demo")
def demo(
    config: str = typer.Option("pipelines/demo.yaml",
                               help="pipeline YAML with `generate:` and `label:` sections"),
    examples: int = typer.Option(3, help="before/after examples to print"),
    principles: Optional[int] = typer.Option(
        None, help="principles ensembled per AI-feedback label (default: the YAML's)"),
) -> None:
    """Generate revisions and preference pairs on red-team prompts, label them with AI
    feedback, and print before/after examples (resumes a finished or interrupted run)."""
    from pathlib import Path

    from cai.backends import load_backend
    from cai.config import ConfigError
    from cai.constitution import ConstitutionError
    from cai.data.store import read_preferences
    from cai.generate.checkpoint import RunConfigError, RunLockedError
    from cai.generate.config import load_config
    from cai.generate.run import run_generate
    from cai.io import DataError
    from cai.label import LabelReport, format_report
    from cai.label.run import load_label_config, run_label

    try:
        gen_cfg = load_config(config)
        label_cfg = load_label_config(config, {"principles": principles})
        with load_backend(gen_cfg.backend_name(), gen_cfg.model, **gen_cfg.backend_options) as engine:
            summary = run_generate(gen_cfg, backend=engine)
            prefs = read_preferences(Path(summary["out"]) / "preferences")
            typer.echo(f"\n== {len(prefs)} preference pairs (revision preferred) from "
                       f"{summary['records']} records, backend {engine.name} ==")
            for rec in prefs[:examples]:
                typer.echo(f"\n> {rec.prompt[-1].content}  [principle {', '.join(rec.principle_ids)}]")
                _show("before", rec.rejected[-1].content)
                _show("after", rec.chosen[-1].content)
            typer.echo(f"\n== AI feedback on those pairs ({label_cfg.principles} principles, "
                       f"both orders) -> {label_cfg.out} ==")
            labeled = run_label(label_cfg, backend=engine, log=typer.echo)
    except (ConfigError, ConstitutionError, DataError, RunConfigError, RunLockedError) as e:
        fail(str(e))
    typer.echo(format_report(LabelReport.model_validate(labeled["report"])))
