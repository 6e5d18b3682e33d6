"""`cai models ...`"""

from __future__ import annotations

import typer

from cai.cli.common import fail

app = typer.Typer(no_args_is_help=True)


@app.command("pull")
def pull_cmd(
    name: str = typer.Argument("smollm2-135m-instruct", help="registry name"),
    force: bool = typer.Option(False, help="re-materialise even if present"),
) -> None:
    """Materialise a registry model as a safetensors directory under $CAI_HOME."""
    from cai.models import ModelError, is_pulled, pull

    if is_pulled(name) and not force:
        from cai.models import models_dir

        typer.echo(f"{name}: already present at {models_dir() / name}")
        return
    try:
        path = pull(name, force=force)
    except ModelError as e:
        fail(str(e))
    typer.echo(f"{name}: pulled to {path}")


@app.command("list")
def list_cmd() -> None:
    """Show registry models and whether they are pulled."""
    from cai.models import list_models

    for row in list_models():
        mark = "pulled " if row["pulled"] else "missing"
        typer.echo(f"{row['name']:28} {mark}  {row['path']}\n{'':28} {row['description']}")
