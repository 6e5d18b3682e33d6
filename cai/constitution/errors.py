"""Located errors: every problem in a constitution names its file, line and column."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class LocatedError:
    """One problem at a place in a file; line and column are 1-based, as editors count."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConstitutionError(ValueError):
    """A constitution could not be loaded; `.errors` holds every problem found, not only the first."""

    def __init__(self, errors: list[LocatedError]):
        self.errors = sorted(set(errors))
        super().__init__("\n".join(str(e) for e in self.errors))


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' when a close choice exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
