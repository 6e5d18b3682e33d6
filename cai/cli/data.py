"""`cai data ...`: import, export, stats, mix. Heavy imports stay inside the commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cai.cli.common import fail

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_cmd(
    src: Path = typer.Argument(..., help="file or directory: .jsonl/.json/.csv/.parquet, a `datasets` "
                                         "directory, or a directory of shards"),
    out: Path = typer.Option(..., "--out", "-o", help="output store directory"),
    fmt: str = typer.Option("auto", "--format", "-f",
                            help="hh (chosen/rejected transcripts) | plain (prompt/chosen/rejected) "
                                 "| trl (message lists, explicit or implicit prompt) | auto (per row)"),
    rejects: Path = typer.Option(None, "--rejects", help="rejects JSONL (default: OUT/rejects.jsonl)"),
    source: str = typer.Option("human", help="source for rows that do not name one"),
    shard_size: int = typer.Option(1000, min=1),
) -> None:
    """Import human preference pairs into a preference store.

    Bad rows go to the rejects file with location and reason; the run goes on. Exits 1
    only if rows were read and none could be imported."""
    from typing import get_args

    from cai.data.importers import FORMATS, import_file
    from cai.io import DataError
    from cai.records import Source

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}")
    if source not in get_args(Source):
        fail(f"--source must be one of {', '.join(get_args(Source))}")
    try:
        report = import_file(src, out, fmt=fmt, rejects_path=rejects, shard_size=shard_size, source=source)
    except DataError as e:
        fail(str(e))
    by_format = ", ".join(f"{k}={v}" for k, v in report.formats.items()) or "-"
    typer.echo(f"{report.rows} rows: {report.imported} imported ({by_format}) -> {report.out_dir}")
    if report.rejected:
        reasons = ", ".join(f"{k}={v}" for k, v in report.reasons.items())
        typer.echo(f"{report.rejected} rejected ({reasons}) -> {report.rejects_path}")
    if report.rows and not report.imported:
        fail("no row could be imported; see the rejects file (wrong --format?)")


@app.command("export")
def export_cmd(
    src: Path = typer.Argument(..., help="preference store directory, .parquet or .jsonl of records"),
    fmt: str = typer.Option(..., "--format", "-f", help="trl | hh | jsonl"),
    out: Path = typer.Option(..., "--out", "-o", help="output JSONL file"),
) -> None:
    """Write records as TRL conversational pairs, HH-RLHF transcripts, or full records.

    trl and hh carry hard labels: p_chosen < 0.5 swaps the pair, a tie (0.5) is skipped.
    hh writes a leading system turn as text before the first Human turn."""
    from cai.data.export import EXPORT_FORMATS, export_records
    from cai.data.store import iter_preferences
    from cai.io import DataError

    if fmt not in EXPORT_FORMATS:
        fail(f"--format must be one of {', '.join(EXPORT_FORMATS)}")
    try:
        report = export_records(iter_preferences(src), fmt, out)
    except DataError as e:
        fail(str(e))
    notes = [f"{n} {what}" for n, what in [(report.swapped, "swapped (p_chosen < 0.5)"),
                                           (report.skipped_ties, "skipped ties"),
                                           (report.skipped_system, "skipped (system turn mid-conversation)")]
             if n]
    typer.echo(f"{report.written} records -> {out} ({fmt})" + (f"; {', '.join(notes)}" if notes else ""))


@app.command("stats")
def stats_cmd(
    src: Path = typer.Argument(..., help="preference store directory, .parquet or .jsonl of records"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Counts, lengths, label distribution, sources and principles of a preference set."""
    from cai.data.stats import compute_stats, format_stats
    from cai.data.store import iter_preferences
    from cai.io import DataError

    try:
        stats = compute_stats(iter_preferences(src))
    except DataError as e:
        fail(str(e))
    typer.echo(json.dumps(stats, indent=2, ensure_ascii=False) if as_json else format_stats(stats))


@app.command("mix")
def mix_cmd(
    inputs: list[str] = typer.Argument(..., help="SET[:WEIGHT] ... (weight 0.5 keeps a seeded half, "
                                                 "2.0 repeats train records twice)"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory (gets train/, test/, mix.json)"),
    test_fraction: float = typer.Option(0.1, min=0.0, max=0.99, help="fraction of prompts held out"),
    seed: int = typer.Option(0),
    shard_size: int = typer.Option(1000, min=1),
) -> None:
    """Combine sets with weights, dedupe, and split train/test by prompt (no prompt leaks)."""
    from cai.data.mix import mix_files
    from cai.io import DataError

    try:
        report = mix_files(inputs, out, test_fraction=test_fraction, seed=seed, shard_size=shard_size)
    except (DataError, ValueError) as e:
        fail(str(e))
    for r in report.inputs:
        typer.echo(f"{r.path} (x{r.weight:g}): {r.read} read, {r.duplicates} duplicates, "
                   f"{r.kept} kept -> train {r.train}, test {r.test}")
    typer.echo(f"{report.prompts} prompts ({report.test_prompts} held out): "
               f"train {report.train}, test {report.test} -> {out}")
