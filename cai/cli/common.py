"""What every `cai` command shares: exit codes, `fail()`, and the backend flags.

Exit codes: 0 success, 1 bad input (a file, record or config that cannot be used),
2 usage (flags that do not go together; typer/click uses 2 for its own usage errors too),
3 a server unreachable past --retry-for, 130/143 stopped by SIGINT/SIGTERM (`interruptible`).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator, NoReturn, Optional

import typer
from pydantic import BaseModel

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_SERVER = 3  # a server that stayed unreachable for the whole --retry-for budget


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def option(config_cls: type[BaseModel], field: str, *param_decls: str, **kwargs: Any) -> Any:
    """A typer option for one field of a stage config: its default and help come from the
    config class, which stays the one source of both (and validates the value)."""
    info = config_cls.model_fields[field]
    default = ... if info.is_required() else info.get_default(call_default_factory=True)
    kwargs.setdefault("help", info.description)
    return typer.Option(default, *param_decls, **kwargs)


def override(config_cls: type[BaseModel], field: str, *param_decls: str, **kwargs: Any) -> Any:
    """A typer option that overrides one field of a stage config read from a YAML file: it
    defaults to None ("not given"), and its help and default come from the config class."""
    info = config_cls.model_fields[field]
    if "help" not in kwargs:
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        shown = "" if default in (None, {}, []) or "default" in (info.description or "").lower() \
            else f" (default {str(default).lower() if isinstance(default, bool) else default})"
        kwargs["help"] = (info.description or "") + shown or None
    return typer.Option(None, *param_decls, **kwargs)


def backend_options(base_url: Optional[str] = None,
                    gpu_memory_utilization: Optional[float] = None,
                    backend: Optional[str] = None,
                    retry_for: Optional[float] = None) -> dict[str, Any]:
    """The `load_backend` keyword options named by the shared backend flags; an option that
    does not apply to the chosen backend is left out."""
    opts: dict[str, Any] = {}
    if base_url:
        opts["base_url"] = base_url
    if gpu_memory_utilization is not None and backend in (None, "vllm"):
        opts["gpu_memory_utilization"] = gpu_memory_utilization
    if retry_for is not None and backend == "openai":
        opts["retry_for"] = retry_for
    return opts


RETRY_FOR_HELP = ("--backend openai: keep retrying an unreachable or failing server this many "
                  "seconds (backoff with jitter, up to 10 s apart) before giving up")


@contextlib.contextmanager
def interruptible(command: str, unsaved: str = "no records saved") -> Iterator[None]:
    """Wrap a long command's work. SIGINT/SIGTERM stop it at once, and a server that stays
    unreachable past --retry-for ends it; either way without a traceback, saying what was
    saved (what the stage noted on the exception, else `unsaved`) and how to resume.
    Exit codes: 128 + signal (130 SIGINT, 143 SIGTERM); 3 for the server."""
    from cai.backends import BackendError
    from cai.interrupt import catch_signals, command_line, exit_code, saved_note

    try:
        with catch_signals():
            yield
    except KeyboardInterrupt as e:  # Interrupted is one too
        signum = getattr(e, "signum", signal.SIGINT)
        typer.echo(f"\ncai {command}: stopped by {signal.Signals(signum).name}; "
                   f"{saved_note(e) or unsaved}. To resume, run the same command again:\n"
                   f"  {command_line()}", err=True)
        raise typer.Exit(exit_code(signum)) from None
    except BackendError as e:
        saved = saved_note(e) or unsaved
        typer.echo(f"error: {e}\n{saved[:1].upper() + saved[1:]}. To resume once the "
                   f"server answers again, run the same command:\n  {command_line()}", err=True)
        raise typer.Exit(EXIT_SERVER) from None
