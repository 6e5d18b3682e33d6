"""The `cai` command line. Sub-commands live beside the code they drive and import lazily,
so `cai --help` stays fast (no torch or vllm at import time)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="cai: turn a written constitution into preference data and an aligned model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


_registered = False


def _register() -> None:
    """Attach every sub-command once (tests call this too)."""
    global _registered
    if _registered:
        return
    _registered = True
    from cai.models_cli import app as models_app

    app.add_typer(models_app, name="models", help="The model registry (embedded default model).")
    from cai.chat_cli import register as register_chat
    from cai.chat_cli import register_serve

    register_chat(app)
    register_serve(app)
    from cai.demo_cli import register as register_demo

    register_demo(app)
    # Further sub-apps register here: constitution, data, generate, label, sample.
    for module, name, help_ in [
        ("cai.constitution.cli", "constitution", "Author, validate and render constitutions."),
        ("cai.data.cli", "data", "Import, export, inspect and mix preference data."),
    ]:
        try:
            mod = __import__(module, fromlist=["app"])
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part of the package is not written yet
            raise
        app.add_typer(mod.app, name=name, help=help_)
    for module in ["cai.generate_cli", "cai.label_cli"]:
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue
            raise
        mod.register(app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
