"""Stopping a long run cleanly: Ctrl-C (SIGINT) and SIGTERM become one exception, and a run
that stops (by a signal, or a failure it cannot ride out) says what it had saved.

- `Interrupted(signum)` is a KeyboardInterrupt, so code that already handles Ctrl-C
  (context managers closing engines, `finally` blocks) handles SIGTERM the same way.
- `catch_signals()` makes SIGINT and SIGTERM raise it in the main thread while a command
  runs; a second signal during the cleanup exits at once.
- A stage adds what it has saved to whatever exception leaves it: `note_saved(e, text)`;
  the command prints it (`saved_note(e)`) with the command line that resumes the run
  (`command_line()`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal (`signum`: SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise `Interrupted` in the main thread; a second
    one while the first unwinds ends the process at once with the same exit code."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received: list[int] = []

    def handler(signum, frame):
        if received:
            os._exit(exit_code(received[0]))
        received.append(signum)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def note_saved(exc: BaseException, text: str) -> None:
    """Record on `exc` what the run has saved so far, e.g. "8 of 12 records in out/run"."""
    exc.cai_saved = text  # type: ignore[attr-defined]


def saved_note(exc: BaseException) -> str | None:
    return getattr(exc, "cai_saved", None)


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line, shell-quoted, as the user would type it again."""
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "cai"
    if Path(prog).name == "__main__.py":  # python -m cai (or a subpackage's __main__)
        package = Path(prog).parent.name
        module = "cai" if package == "cai" else f"cai.{package}"
        head = ["python", "-m", module]
    else:
        head = [Path(prog).name]
    return shlex.join(head + argv[1:])
