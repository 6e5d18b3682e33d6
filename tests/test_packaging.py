"""The wheel (`pip install .`, not only `-e .`) carries the shipped constitutions, and cai
finds them when it runs from the unpacked wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    # a clean copy: building in the checkout would leave build/ and *.egg-info behind
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "cai", src / "cai", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(dist), str(src)], check=True, timeout=300)
    (whl,) = dist.glob("cai-*.whl")
    return whl


def test_wheel_lists_the_shipped_constitutions_and_dependencies(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "cai/constitution/shipped").glob("*.yaml"))
    assert len(shipped) >= 3
    assert [n for n in names if n.startswith("cai/constitution/shipped/")] == [
        f"cai/constitution/shipped/{s}" for s in shipped]
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(meta_name).decode())
    requires = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in meta.get_all("Requires-Dist")}
    assert {"peft", "tensorboard", "matplotlib"} <= requires
    assert meta.get_all("Provides-Extra") == ["dev"]


def test_cai_from_the_unpacked_wheel_finds_them(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", "import cai, cai.constitution as c; print(cai.__file__); "
                               "print(c.load_constitution('harmless').content_hash())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    where, digest = out.split()
    assert Path(where).is_relative_to(site)  # not the checkout
    from cai.constitution import load_constitution

    assert digest == load_constitution("harmless").content_hash()
