"""The wheel (`pip install .`, not only `-e .`) carries the shipped constitutions, and cai
finds them when it runs from the unpacked wheel."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # From the real tree: hatchling builds in place and leaves nothing behind in it.
    dist = tmp_path_factory.mktemp("dist")
    # the build backend from the venv when `make setup` put it there (dev extra), else from PyPI
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                    "--quiet", "-w", str(dist), str(ROOT)], check=True, timeout=300)
    (whl,) = dist.glob("cai-*.whl")
    return whl


def test_wheel_lists_the_shipped_constitutions_and_dependencies(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "constitutions").glob("*.yaml"))
    assert "harmless.yaml" in shipped and len(shipped) >= 3
    # the top-level constitutions/ folder goes into the package, where importlib.resources finds it
    assert [n for n in names if n.startswith("cai/constitutions/")] == [
        f"cai/constitutions/{s}" for s in shipped]
    assert not [n for n in names if n.startswith(("constitutions/", "tests/", "docs/"))]
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(meta_name).decode())
    requires = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in meta.get_all("Requires-Dist")}
    assert {"peft", "tensorboard", "matplotlib"} <= requires
    # Ray and DeepSpeed are optional extras, never base dependencies
    assert sorted(meta.get_all("Provides-Extra")) == ["deepspeed", "dev", "ray"]
    assert not {"ray", "deepspeed"} & requires_base(meta)


def requires_base(meta) -> set[str]:
    """The Requires-Dist names outside any extra."""
    return {r.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip()
            for r in meta.get_all("Requires-Dist") if "extra ==" not in r}


def test_cai_from_the_unpacked_wheel_finds_them(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip does with a pure-Python wheel
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", "import cai, cai.constitution as c; print(cai.__file__); "
                               "print(c.SHIPPED_DIR); print(c.load_constitution('harmless').content_hash())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    where, shipped, digest = out.split()
    assert Path(where).is_relative_to(site)  # not the checkout
    assert Path(shipped) == site / "cai" / "constitutions"
    from cai.constitution import load_constitution

    assert digest == load_constitution("harmless").content_hash()
    validate = subprocess.run([sys.executable, "-m", "cai", "constitution", "validate", "harmless"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0, validate.stderr
    assert "harmless" in validate.stdout
