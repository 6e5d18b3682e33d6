"""The environment for a test's child Python process: this checkout first on PYTHONPATH,
ahead of (not instead of) any PYTHONPATH already set, which is how packages arrive on
machines where they are not installed into the interpreter (the GPU check's carried wheels)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}
