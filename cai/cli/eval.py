"""`cai eval rm` (and, later, `cai eval policy`): flags -> config -> run -> printed result."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cai.cli.common import fail

app = typer.Typer(no_args_is_help=True)


@app.command("rm")
def rm_cmd(
    model: str = typer.Option(..., "--model", "-m", help="reward model directory"),
    data: str = typer.Option(..., "--data", "-d", help="preference store or any file `cai label "
                                                       "--pairs` reads (HH, TRL, prompt/chosen/rejected)"),
    max_length: int = typer.Option(1024, help="tokens; longer texts keep their end"),
    batch_size: int = typer.Option(16),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
) -> None:
    """Pairwise accuracy (95% Wilson interval), mean margin, ECE and the length baseline."""
    from cai.eval.rm import EvalRMConfig, format_eval, run_eval_rm
    from cai.io import DataError
    from cai.models import ModelError

    try:
        config = EvalRMConfig(model=model, data=data, max_length=max_length, batch_size=batch_size)
        metrics = run_eval_rm(config, echo=lambda s: typer.echo(s, err=True))
    except (DataError, ModelError) as e:
        fail(str(e))
    typer.echo(json.dumps(metrics, indent=2) if as_json else format_eval(metrics))
