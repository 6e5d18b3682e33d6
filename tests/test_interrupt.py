"""Clean interrupt and the run-directory lock: `cai generate` as a real subprocess, stopped
with SIGINT or SIGTERM after its first shard, says how many records it saved and the exact
command that resumes it; running that command finishes the job exactly once. A second
process on a locked run directory is told which process holds it; a dead holder's lock is
taken over, with a message."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from child_env import child_env

from cai.generate.checkpoint import RunLockedError, RunStore

REPO = Path(__file__).parents[1]
LIMIT, CHUNK = 6, 2


def _args(model_dir: Path, out: Path) -> list[str]:
    return ["generate", "--prompts", str(REPO / "pipelines/prompts/red_team_train.jsonl"),
            "-o", str(out), "--backend", "transformers", "--model", str(model_dir),
            "--limit", str(LIMIT), "--chunk-size", str(CHUNK), "--max-tokens", "8",
            "--no-few-shot", "--seed", "3", "--no-progress"]


def _env() -> dict[str, str]:
    return child_env(PYTHONUNBUFFERED="1")


def _ids(run: Path) -> list[str]:
    return [i for f in sorted((run / "revisions").glob("part-*.parquet"))
            for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_prints_the_resume_command(tmp_path, tiny_model_dir, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cai", *_args(tiny_model_dir, run)], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not _ids(run):
        time.sleep(0.02)
    assert proc.poll() is None, f"ended before the signal:\n{proc.communicate()[1]}"
    proc.send_signal(sig)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10  # at once: the chunk in flight is abandoned
    assert proc.returncode == 128 + sig  # 130, 143
    assert "Traceback" not in err
    saved = len(_ids(run))
    assert 0 < saved < LIMIT
    assert f"stopped by {signal.Signals(sig).name}; {saved} of {LIMIT} records saved in {run}" in err
    resume = err.split("To resume, run the same command again:\n", 1)[1].strip().splitlines()[0]
    argv = shlex.split(resume)
    assert argv[:3] == ["python", "-m", "cai"] and argv[3:] == _args(tiny_model_dir, run)
    assert not (run / ".lock").read_text()  # released and cleared
    if sig == signal.SIGTERM:
        return  # the resume is the same for both; run it once (a subprocess costs ~10 s)

    rerun = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{saved} of {LIMIT} records already done" in rerun.stderr
    ids = _ids(run)
    assert len(ids) == LIMIT == len(set(ids))


HOLDER = """
import sys, time
from cai.generate.checkpoint import RunStore
store = RunStore(sys.argv[1])
store.open({"fingerprint": "x"}, {})
print("locked", flush=True)
time.sleep(600)
"""


def test_a_locked_run_names_its_holder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as e:
            RunStore(run).open({"fingerprint": "x"}, {})
        message = str(e.value)
        assert f"in use by another `cai generate` (pid {holder.pid} on " in message
        assert "running since" in message and "Wait for it to finish" in message
    finally:
        holder.kill()  # SIGKILL: no chance to clear its name from the lock file
        holder.wait()
    with RunStore(run) as store:
        store.open({"fingerprint": "x"}, {})
        assert store.stale_holder["pid"] == holder.pid
        assert f'"pid": {os.getpid()}' in (run / ".lock").read_text()
    assert (run / ".lock").read_text() == ""  # a clean close leaves no name
    with RunStore(run) as store:
        store.open({"fingerprint": "x"}, {})
        assert store.stale_holder is None


def test_run_generate_says_it_takes_over_a_stale_lock(tmp_path, tiny_backend, capsys):
    from cai.generate.config import load_config
    from cai.generate.run import run_generate

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text('{"pid": 999999, "host": "h", "started": "then", "command": "c"}\n')
    cfg = load_config(None, {"prompts": str(REPO / "pipelines/prompts/red_team_train.jsonl"),
                             "out": str(run), "backend": "transformers", "limit": 1,
                             "max_tokens": 4, "few_shot": False, "progress": False})
    run_generate(cfg, backend=tiny_backend)
    err = capsys.readouterr().err
    assert "taking over the lock left by pid 999999 on h (started then), which is no longer running" in err


class SignalledMidway:
    """The tiny backend, but the process gets `sig` (a real signal, through the real
    handler) the moment the engine is first asked for work."""

    def __init__(self, inner, sig):
        self.inner, self.sig = inner, sig

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def generate(self, *args, **kw):
        os.kill(os.getpid(), self.sig)
        return self.inner.generate(*args, **kw)

    def continuation_logprobs(self, *args, **kw):
        os.kill(os.getpid(), self.sig)
        return self.inner.continuation_logprobs(*args, **kw)


@pytest.mark.parametrize("command", ["sample", "label"])
def test_label_and_sample_stop_cleanly_too(tmp_path, tiny_backend, monkeypatch, command):
    from typer.testing import CliRunner

    import cai.cluster.backend
    import cai.label.run
    from cai.cli import app

    # label loads its engine itself; sample through load_engine (local, or on Ray)
    for module in (cai.label.run, cai.cluster.backend):
        monkeypatch.setattr(module, "load_backend",
                            lambda *a, **k: SignalledMidway(tiny_backend, signal.SIGTERM))
    monkeypatch.setattr(sys, "argv", ["cai", command, "..."])
    if command == "sample":
        args = ["sample", str(REPO / "pipelines/prompts/red_team_train.jsonl"), "--limit", "2",
                "--max-tokens", "4", "-o", str(tmp_path / "c.jsonl")]
        saved = f"no candidates saved (cai sample writes {tmp_path / 'c.jsonl'} at the end"
    else:
        args = ["label", "--pairs", str(REPO / "pipelines/prompts/human_prefs.jsonl"),
                "--limit", "2", "--no-few-shot", "-o", str(tmp_path / "labels")]
        saved = f"no records saved (cai label writes {tmp_path / 'labels'} once every pair"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 143, result.output
    assert f"cai {command}: stopped by SIGTERM; {saved}" in result.output
    assert f"run the same command again:\n  cai {command} ...\n" in result.output
    assert not (tmp_path / "c.jsonl").exists() and not (tmp_path / "labels").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back
