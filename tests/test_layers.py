"""The package's layering (pyproject.toml [tool.importlinter]) holds, checked by
`lint-imports`; and a deliberate back-edge in a copy of the package breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from child_env import REPO, child_env


def _lint_imports(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = str(exe) if exe.exists() else shutil.which("lint-imports")
    assert cmd, "lint-imports not found: install the dev extra (pip install -e .[dev])"
    return subprocess.run([cmd, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_checkout_keeps_its_contracts():
    r = _lint_imports(REPO, child_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


@pytest.mark.parametrize("module, line, broken", [
    # the lowest layer reaching up to the runner
    ("cai/schema.py", "import cai.pipeline", "cai.schema is not allowed to import cai.pipeline"),
    # one sibling stage importing the other
    ("cai/generate/verdict.py", "import cai.label.inputs",
     "cai.generate is not allowed to import cai.label"),
])
def test_a_back_edge_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copytree(REPO / "cai", tmp_path / "cai",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    r = _lint_imports(tmp_path, env)
    assert r.returncode != 0
    assert broken in r.stdout, r.stdout + r.stderr
