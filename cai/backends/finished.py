"""Requests an engine finishes inside one batched call, reported as they finish.

A stage hands a whole batch to the engine in one call, so a bar that moved only when the
call returned stood still for the call's length (a minute for 64 answers on a CPU). A
caller wraps the call in `reporting(fn)`; a backend that sees requests finish one by one
(vLLM's engine loop) calls `finished(n)`, which reaches `fn`. A context variable rather
than a parameter, so the backends' `generate` signature, the weight-swap views in front of
an engine and test fakes stay as they are; a backend that cannot tell reports nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

Reporter = Callable[[int], None]

_reporter: ContextVar[Reporter | None] = ContextVar("cai_finished_requests", default=None)


@contextmanager
def reporting(fn: Reporter | None) -> Iterator[None]:
    """Within the block, `finished(n)` calls `fn(n)` (None: nothing is reported)."""
    token = _reporter.set(fn)
    try:
        yield
    finally:
        _reporter.reset(token)


def active() -> bool:
    """Whether a caller is listening (so a backend need not count for nobody)."""
    return _reporter.get() is not None


def finished(n: int = 1) -> None:
    """`n` more requests of the current call are done."""
    fn = _reporter.get()
    if fn is not None and n:
        fn(n)
