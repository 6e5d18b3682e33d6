"""`cai score`: add a reward column to prompt/response rows."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.common import fail

app = typer.Typer()


@app.command("score")
def score_cmd(
    model: str = typer.Option(..., "--model", "-m", help="reward model directory"),
    data: Path = typer.Option(..., "--data", "-d", help="rows with a prompt and a response"),
    out: Path = typer.Option(..., "--out", "-o", help="output .jsonl or .parquet"),
    prompt_field: str = typer.Option("prompt", help="text or message-list column"),
    response_field: str = typer.Option("response"),
    max_length: int = typer.Option(1024), batch_size: int = typer.Option(16),
) -> None:
    """Score each row with the reward model; writes the rows with a `reward` column."""
    from cai.eval.score import ScoreConfig, run_score
    from cai.io import DataError
    from cai.models import ModelError

    try:
        summary = run_score(ScoreConfig(model=model, data=str(data), out=str(out),
                                        prompt_field=prompt_field, response_field=response_field,
                                        max_length=max_length, batch_size=batch_size),
                            echo=typer.echo)
    except (DataError, ModelError) as e:
        fail(str(e))
    typer.echo(f"{summary['rows']} rows scored -> {summary['out']} (mean reward "
               f"{summary['mean_reward']:.3f}, {summary['seconds']:.1f} s)")
