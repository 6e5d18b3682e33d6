"""`cai demo`: the pipeline so far on the embedded model, through one vLLM engine:
respond → critique → revise → pair (generation), then label the pairs with AI feedback."""

from __future__ import annotations

import textwrap

import typer


def _show(title: str, text: str, width: int = 96) -> None:
    body = textwrap.shorten(" ".join(text.split()), 420, placeholder=" ...")
    typer.echo(f"  {title}:\n" + textwrap.indent(textwrap.fill(body, width - 6), "      "))


app = typer.Typer()


@app.command("demo")
def demo(
    config: str = typer.Option("pipelines/demo.yaml", help="pipeline YAML with a generate: section"),
    examples: int = typer.Option(3, help="before/after examples to print"),
    principles: int = typer.Option(2, help="principles ensembled per AI-feedback label"),
) -> None:
    """Generate revisions and preference pairs on red-team prompts, label them with AI
    feedback, and print before/after examples (resumes a finished or interrupted run)."""
    from pathlib import Path

    from cai.backends import load_backend
    from cai.constitution import load_constitution
    from cai.data.store import read_preferences, write_preferences
    from cai.generate.config import load_config
    from cai.generate.run import run_generate
    from cai.label import LabelConfig, build_report, format_report, label_pairs, read_pairs
    from cai.label import run_info, to_record

    cfg = load_config(config)
    constitution = load_constitution(cfg.constitution)
    with load_backend(cfg.backend_name(), cfg.model, **cfg.backend_options) as engine:
        summary = run_generate(cfg, backend=engine)
        out = Path(summary["out"])
        prefs = read_preferences(out / "preferences")
        typer.echo(f"\n== {len(prefs)} preference pairs (revision preferred) from "
                   f"{summary['records']} records, backend {engine.name} ==")
        for rec in prefs[:examples]:
            typer.echo(f"\n> {rec.prompt[-1].content}  [principle {', '.join(rec.principle_ids)}]")
            _show("before", rec.rejected[-1].content)
            _show("after", rec.chosen[-1].content)

        pairs, _ = read_pairs(out / "preferences")
        label_cfg = LabelConfig(principles=principles, seed=cfg.seed)
        labels = label_pairs(engine, constitution, pairs, label_cfg)
        records = [to_record(lab, engine.model, run_info(constitution, label_cfg)) for lab in labels]
        labeled = out.parent / "labels"
        write_preferences(records, labeled)
        typer.echo(f"\n== AI feedback on those pairs ({principles} principles, both orders) "
                   f"-> {labeled} ==")
        typer.echo(format_report(build_report(records)))
