"""Exactly-once resume: `cai generate` as a real subprocess, SIGKILLed mid-run, rerun;
the records equal those of an uninterrupted run, none lost, none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from cai.generate.config import load_config
from cai.generate.run import run_generate

REPO = Path(__file__).parents[1]
LIMIT, CHUNK = 6, 2


def _args(model_dir: Path, out: Path) -> list[str]:
    return ["--prompts", str(REPO / "pipelines/prompts/red_team_train.jsonl"), "-o", str(out),
            "--backend", "transformers", "--model", str(model_dir), "--limit", str(LIMIT),
            "--chunk-size", str(CHUNK), "--max-tokens", "8", "--no-few-shot",
            "--temperature", "0.7", "--seed", "3", "--no-progress"]


def _records(run: Path) -> list[dict]:
    rows = [r for f in sorted((run / "revisions").glob("part-*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    for r in rows:
        r.pop("timings")  # wall-clock seconds differ between runs; everything else must not
    return rows


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cai", "generate", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_then_rerun_is_exactly_once(tmp_path, tiny_model_dir, tiny_backend):
    killed_run = tmp_path / "killed"
    proc = _run(_args(tiny_model_dir, killed_run))
    shards = killed_run / "revisions"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(shards.glob("part-*.parquet")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.communicate()[1]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(_records(killed_run))
    assert 0 < done_at_kill < LIMIT, "killed mid-run: some chunks written, not all"
    assert done_at_kill % CHUNK == 0  # shards are whole chunks, never partial

    rerun = _run(_args(tiny_model_dir, killed_run))
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"{done_at_kill} of {LIMIT} records already done" in err
    resumed = _records(killed_run)
    ids = [r["id"] for r in resumed]
    assert len(ids) == LIMIT and len(set(ids)) == LIMIT  # no loss, no duplicate
    assert not list(killed_run.rglob("*.tmp"))

    # The same config, uninterrupted (in this process, same weights and batching).
    cfg = load_config(None, {"prompts": str(REPO / "pipelines/prompts/red_team_train.jsonl"),
                             "out": str(tmp_path / "clean"), "backend": "transformers",
                             "model": str(tiny_model_dir), "limit": LIMIT, "chunk_size": CHUNK,
                             "max_tokens": 8, "few_shot": False, "temperature": 0.7, "seed": 3,
                             "progress": False})
    run_generate(cfg, backend=tiny_backend)
    clean = _records(tmp_path / "clean")
    by_id = {r["id"]: r for r in clean}
    assert set(by_id) == set(ids)
    for r in resumed:
        assert r == by_id[r["id"]]
