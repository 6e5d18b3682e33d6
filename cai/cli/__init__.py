"""The `cai` command line: one table of commands, built at import.

Each command group lives in its own module here and exposes `app` (a typer.Typer). A group
with a name becomes `cai NAME ...`; a group without one adds its commands at the top level
(`cai generate`). Command modules import heavy libraries (torch, vllm) inside the commands,
so `cai --help` stays fast. Stage packages never import typer: a command maps flags to a
config, calls the stage's `run_x`, and prints the result.
"""

from __future__ import annotations

import contextlib
import os
import sys

import typer

from cai.cli import (chat, constitution, data, demo, eval, generate, label, models, run, score,
                     serve, train)

# (module, group name or None for top-level commands, help)
COMMANDS: list[tuple[object, str | None, str | None]] = [
    (models, "models", "The model registry (embedded default model)."),
    (chat, None, None),
    (serve, None, None),
    (constitution, "constitution", "Author, validate and render constitutions."),
    (data, "data", "Import, export, inspect and mix preference data."),
    (generate, None, None),
    (label, None, None),
    (demo, None, None),
    (train, "train", "Train: SFT on revisions (SL-CAI), the reward model."),
    (eval, "eval", "Evaluate reward models and policies; build the run report."),
    (score, None, None),
    (run, None, None),
]

app = typer.Typer(
    help="cai: turn a written constitution into preference data and an aligned model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Commands that load models or engines. Their engine and library output (vLLM's warnings,
# C-level prints, loading bars) goes to $CAI_HOME/logs/<command>.log, so the terminal (and
# `--json` on stdout) keeps only what cai prints; `cai --verbose <command>` shows it all.
# `cai run` keeps its own log in the run directory; `cai serve` shows its server's log.
QUIET_COMMANDS = frozenset({"generate", "label", "sample", "score", "eval", "train", "chat"})
LOG_BYTES_KEPT = 20 * 2**20  # a log past this size is started afresh


@app.callback()
def _root(ctx: typer.Context,
          verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="show engine and library logs on the terminal "
                                            "instead of in $CAI_HOME/logs/<command>.log")) -> None:
    if verbose or ctx.resilient_parsing or ctx.invoked_subcommand not in QUIET_COMMANDS:
        return
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        return
    from cai.models import cai_home

    log = cai_home() / "logs" / f"{ctx.invoked_subcommand}.log"
    ctx.with_resource(_engine_output_to(log))


@contextlib.contextmanager
def _engine_output_to(log):
    from cai.pipeline.logs import engine_logs_to_file

    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_BYTES_KEPT:
            log.unlink()
    try:
        with engine_logs_to_file(log):
            yield
    except BaseException as e:  # after the terminal is restored: say where the details are
        code = getattr(e, "exit_code", getattr(e, "code", 1))
        if code not in (0, None):
            print(f"engine and library output: {log} (`cai --verbose ...` prints it here)",
                  file=sys.stderr)
        raise


for _module, _name, _help in COMMANDS:
    if _name is None:
        app.add_typer(_module.app)
    else:
        app.add_typer(_module.app, name=_name, help=_help)


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code in (130, 143):
            # Stopped by a signal (`common.interruptible`): the work is saved and the engine
            # shut down. Skip the interpreter's teardown, a full garbage collection that
            # takes seconds after an interrupted torch run; nothing is left to release
            # (engine processes still alive die with us: backends/lifeline.py).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code)
        raise
