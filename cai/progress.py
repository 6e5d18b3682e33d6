"""Bars that keep moving through one long blocking call (no silent minutes).

A tqdm bar redraws only when it is updated, so a bar around one call that takes a minute
(an engine start, a model load, one eval phase) would sit still and look hung. `ticking`
redraws it every second from a thread, so its elapsed time (and, once a step is done, its
ETA) stays current; `loading` is the bar for a model or engine being loaded.

    with loading(progress, "reward model out/rm", disable=not config.progress):
        model = load(...)
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator


@contextmanager
def ticking(bar: Any, every: float = 1.0) -> Iterator[Any]:
    """Redraw `bar` every `every` seconds while the body runs (nothing for a disabled bar)."""
    if getattr(bar, "disable", False):
        yield bar
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            bar.refresh()

    thread = threading.Thread(target=tick, name="progress-tick", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()


@contextmanager
def loading(progress: Callable[..., Any], what: str, *, disable: bool = False) -> Iterator[Any]:
    """A one-step bar "loading WHAT" that ticks until the body (the load) returns."""
    bar = progress(total=1, desc=f"loading {what}", unit="model", disable=disable, leave=False)
    try:
        with ticking(bar):
            yield bar
        bar.update(1)
    finally:
        bar.close()


def above_bars(text: str) -> None:
    """Print a line on stdout above the progress bars instead of through one (`tqdm.write`
    clears the bars, prints, and redraws them); a plain print when no bar is open. (Stage
    logs on stderr do the same: `cai.config.say`.)"""
    import sys

    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()
