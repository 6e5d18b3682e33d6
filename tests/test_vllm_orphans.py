"""No orphaned engines: `cai generate --backend vllm` in a subprocess, SIGKILLed after its
first shard; 15 s later no process of its tree (EngineCore, workers) is alive. The rerun
then finishes with the same record ids as an uninterrupted run with the same seed.

Starts three engines one after another (~1 min each on CPU); run it under the vLLM lock:
    flock /tmp/cai-vllm.lock python -m pytest -q tests/test_vllm_orphans.py -m vllm
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from child_env import child_env
from test_lifeline import _alive

psutil = pytest.importorskip("psutil")
pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).parents[1]
LIMIT, CHUNK = 8, 4


def _cmd(model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cai", "generate",
            "--prompts", str(REPO / "pipelines/prompts/red_team_train.jsonl"), "-o", str(out),
            "--backend", "vllm", "--backend-option", "gpu_memory_utilization=0.15", "--model", str(model_dir),
            "--limit", str(LIMIT), "--chunk-size", str(CHUNK), "--max-tokens", "16",
            "--no-few-shot", "--temperature", "0.7", "--seed", "3", "--no-progress"]


def _env() -> dict[str, str]:
    return child_env(PYTHONUNBUFFERED="1")


def _ids(run: Path) -> list[str]:
    return [i for f in sorted((run / "revisions").glob("part-*.parquet"))
            for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def test_sigkilled_generate_leaves_no_engine_and_resumes(tmp_path, embedded_model_dir):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(embedded_model_dir, killed), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    tree: dict[int, object] = {}
    try:
        deadline = time.monotonic() + 300
        while not _ids(killed):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no shard after 300 s"
            tree.update((c.pid, c) for c in root.children(recursive=True))
            time.sleep(0.1)
        tree.update((c.pid, c) for c in root.children(recursive=True))
        assert len(_ids(killed)) < LIMIT, "the run finished before it could be killed"
        names = [" ".join(p.cmdline()) for p in _alive(list(tree.values()))]
        assert names, "vLLM runs its engine in a child process"  # VLLM::EngineCore
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while _alive(list(tree.values())) and time.monotonic() - t0 < 15:
            time.sleep(0.2)
        left = [(p.pid, p.name()) for p in _alive(list(tree.values()))]
        assert not left, f"still alive 15 s after SIGKILL: {left}"
        print(f"tree of {len(tree)} processes gone {time.monotonic() - t0:.1f} s after SIGKILL")
    finally:
        for p in _alive(list(tree.values())):
            p.kill()
        if proc.poll() is None:
            proc.kill()

    done_at_kill = len(_ids(killed))
    rerun = subprocess.run(_cmd(embedded_model_dir, killed), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done_at_kill} of {LIMIT} records already done" in rerun.stderr
    clean = tmp_path / "clean"
    once = subprocess.run(_cmd(embedded_model_dir, clean), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert once.returncode == 0, once.stderr[-3000:]
    resumed = _ids(killed)
    assert len(resumed) == len(set(resumed)) == LIMIT
    assert set(resumed) == set(_ids(clean))
