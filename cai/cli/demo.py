"""`cai demo`: `cai run pipelines/demo.yaml`, the RL-CAI recipe on the embedded model."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer()


@app.command("demo")
def demo(
    config: Path = typer.Option(Path("pipelines/demo.yaml"), "--config", help="the pipeline to run"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show engine logs here"),
) -> None:
    """Run the demo pipeline (same as `cai run pipelines/demo.yaml`): a rerun skips the
    finished stages and reprints the summary."""
    from cai.cli.run import run_file

    run_file(config, verbose=verbose)
