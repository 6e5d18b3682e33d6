"""Quiet terminal: engine and library logs go to <run>/logs/engine.log, the terminal keeps
what `cai` itself prints (its lines and progress bars).

How, since the noise comes from several places:
  - vLLM's own loggers (in this process and in its engine-core process) are configured
    from VLLM_LOGGING_CONFIG_PATH: we point it at a dictConfig that writes to the log file;
  - C-level writes (torch, Triton, OpenMP) and everything the engine's child processes
    print go to file descriptors 1 and 2: we point those at the log file, and give Python's
    sys.stdout/sys.stderr fresh file objects on copies of the terminal's descriptors, so
    `print` and tqdm still reach the terminal;
  - Python loggers of transformers, torch, accelerate, datasets and warnings.warn go to
    the log file through the root logger; datasets' own progress bars are switched off.
Environment variables set here are inherited by the engine's processes, so this must run
before vLLM is imported (the `cai` CLI imports it lazily).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

NOISY_LOGGERS = ("vllm", "transformers", "torch", "accelerate", "datasets", "peft", "triton",
                 "huggingface_hub", "urllib3", "filelock", "py.warnings")


def _vllm_logging_config(log_file: Path) -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(asctime)s %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file),
                              "formatter": "plain", "mode": "a", "encoding": "utf-8"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _terminal(stream, fd: int, saved_fd: int):
    """A text stream that still reaches the terminal once `fd` points at the log: the
    stream itself when it does not write to `fd` (a test runner's buffer), else a new
    stream on a copy of the original descriptor."""
    if _fileno(stream) != fd:
        return stream
    term_fd = os.dup(saved_fd)
    term = io.TextIOWrapper(os.fdopen(term_fd, "wb"),
                            encoding=getattr(stream, "encoding", None) or "utf-8",
                            errors="replace", line_buffering=True, write_through=True)
    # tqdm and others ask isatty() to decide on \r redraws: answer for the real terminal
    term.isatty = lambda: os.isatty(term_fd)  # type: ignore[method-assign]
    return term


@contextlib.contextmanager
def engine_logs_to_file(log_file: str | os.PathLike) -> Iterator[Path]:
    """Inside the block, engine/library output goes to `log_file` (appended); the terminal
    keeps sys.stdout/sys.stderr. Restores everything on exit."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config_path = log_file.with_name("vllm-logging.json")
    config_path.write_text(json.dumps(_vllm_logging_config(log_file), indent=1),
                           encoding="utf-8")
    env = {"VLLM_LOGGING_CONFIG_PATH": str(config_path), "VLLM_CONFIGURE_LOGGING": "1",
           "VLLM_LOGGING_LEVEL": "INFO", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TQDM_DISABLE": None}
    saved_env = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved_fds = (os.dup(1), os.dup(2))
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_streams = (sys.stdout, sys.stderr)
    term_out = _terminal(sys.stdout, 1, saved_fds[0])
    term_err = _terminal(sys.stderr, 2, saved_fds[1])
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout, sys.stderr = term_out, term_err

    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    saved_loggers = {}
    for name in NOISY_LOGGERS:
        lg = logging.getLogger(name)
        saved_loggers[name] = (lg.handlers[:], lg.propagate)
        if name != "vllm":  # vLLM configures its own from the file above
            lg.handlers = []
            lg.propagate = True
    logging.captureWarnings(True)
    try:
        yield log_file
    finally:
        logging.captureWarnings(False)
        for name, (handlers, propagate) in saved_loggers.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate
        root.handlers, _ = saved_root[0], root.setLevel(saved_root[1])
        handler.close()
        for stream in (term_out, term_err):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in (*saved_fds, log_fd):
            os.close(fd)
        for stream, old in zip((term_out, term_err), saved_streams):
            if stream is not old:
                with contextlib.suppress(Exception):
                    stream.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def append(log_file: Path, text: str) -> None:
    with open(log_file, "a", encoding="utf-8") as f:
        f.write(text)
