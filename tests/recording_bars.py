"""A `progress=` factory for tests: the bars a stage made, each keeping what it was told."""

from __future__ import annotations


class RecordingBar:
    def __init__(self, total=None, desc="", disable=False, initial=0, **_):
        self.total, self.desc, self.disable, self.n = total, desc.strip(), disable, initial
        self.postfixes: list[str] = []
        self.resets = self.refreshes = 0
        self.closed = False

    def reset(self, total=None):  # tqdm's: count and clock start again
        self.n, self.total, self.resets = 0, total, self.resets + 1

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, s="", refresh=True):
        self.postfixes.append(s)

    def set_postfix(self, *a, **kw):
        self.postfixes.append(str(kw or a))

    def refresh(self):  # a redraw with no update (the clock ticking through a call)
        self.refreshes += 1

    def close(self):
        self.closed = True


class RecordingBars:
    """The factory. (Not a list: an empty one is falsy, and `make or progress_bar` would
    pass it over.)"""

    def __init__(self) -> None:
        self.made: list[RecordingBar] = []

    def __call__(self, **kw) -> RecordingBar:
        self.made.append(RecordingBar(**kw))
        return self.made[-1]

    def named(self, prefix: str) -> list[RecordingBar]:
        return [b for b in self.made if b.desc.startswith(prefix)]
