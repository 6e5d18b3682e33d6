"""What every `cai` command shares: exit codes, `fail()`, and the backend flags.

Exit codes: 0 success, 1 bad input (a file, record or config that cannot be used),
2 usage (flags that do not go together; typer/click uses 2 for its own usage errors too).
"""

from __future__ import annotations

from typing import Any, NoReturn, Optional

import typer
from pydantic import BaseModel

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


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


def backend_options(base_url: Optional[str] = None,
                    gpu_memory_utilization: Optional[float] = None,
                    backend: Optional[str] = None) -> dict[str, Any]:
    """The `load_backend` keyword options named by the shared backend flags; an option that
    does not apply to the chosen backend is left out."""
    opts: dict[str, Any] = {}
    if base_url:
        opts["base_url"] = base_url
    if gpu_memory_utilization is not None and backend in (None, "vllm"):
        opts["gpu_memory_utilization"] = gpu_memory_utilization
    return opts

