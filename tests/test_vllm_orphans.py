"""No orphaned engines: `cai generate --backend vllm` in a subprocess, SIGKILLed after its
first shard; 15 s later no process of its tree (EngineCore, workers) is alive. The rerun
then finishes with the record ids an uninterrupted run makes: one per planned prompt,
`record_id(prompt, sample, fingerprint)` of the run's stored configuration.

A tiny random Llama (what it writes does not matter here) keeps generation to seconds, so
the two engine starts are most of the time; the ids an uninterrupted run would make are
computed, not made by a third engine. Run it under the vLLM lock:
    flock /tmp/cai-vllm.lock python -m pytest -q tests/test_vllm_orphans.py -m vllm
"""

from __future__ import annotations

import json
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
LIMIT, CHUNK = 8, 2  # four shards: the kill lands well before the last


def _cmd(model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cai", "generate",
            "--prompts", str(REPO / "pipelines/prompts/red_team_train.jsonl"), "-o", str(out),
            "--backend", "vllm", "--backend-option", "gpu_memory_utilization=0.15",
            "--backend-option", "max_model_len=2048", "--model", str(model_dir),
            "--limit", str(LIMIT), "--chunk-size", str(CHUNK), "--max-tokens", "16",
            "--no-few-shot", "--temperature", "0.7", "--seed", "3", "--no-progress"]


def _env() -> dict[str, str]:
    return child_env(PYTHONUNBUFFERED="1")


def _ids(run: Path) -> list[str]:
    return [i for f in sorted((run / "revisions").glob("part-*.parquet"))
            for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


@pytest.fixture(scope="module")
def tiny_vllm_model(tmp_path_factory, embedded_tokenizer) -> Path:
    from conftest import build_tiny_llama

    path = tmp_path_factory.mktemp("tiny-vllm")
    build_tiny_llama(embedded_tokenizer, head_dim=64).save_pretrained(path, safe_serialization=True)
    embedded_tokenizer.save_pretrained(path)
    return path


def _planned_ids(run: Path) -> set[str]:
    """The ids an uninterrupted run with this run's configuration makes."""
    from cai.generate.config import fingerprint
    from cai.generate.run import record_id
    from cai.prompts import load_prompts

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["fingerprint"] == fingerprint(manifest["generation"])
    items, _ = load_prompts(REPO / "pipelines/prompts/red_team_train.jsonl", limit=LIMIT)
    assert len(items) == LIMIT
    return {record_id(it, 0, manifest["fingerprint"]) for it in items}


def test_sigkilled_generate_leaves_no_engine_and_resumes(tmp_path, tiny_vllm_model):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tiny_vllm_model, killed), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    tree: dict[int, object] = {}
    try:
        deadline = time.monotonic() + 300
        while not _ids(killed):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no shard after 300 s"
            tree.update((c.pid, c) for c in root.children(recursive=True))
            time.sleep(0.02)
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
    rerun = subprocess.run(_cmd(tiny_vllm_model, killed), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done_at_kill} of {LIMIT} records already done" in rerun.stderr
    resumed = _ids(killed)
    assert len(resumed) == len(set(resumed)) == LIMIT
    assert set(resumed) == _planned_ids(killed)
