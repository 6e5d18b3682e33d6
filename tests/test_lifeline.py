"""Children die with their parent, SIGKILL included: a parent process arms the lifeline,
starts children the ways vLLM does (multiprocessing fork, from the main thread and from
another thread; spawn) plus a grandchild, and is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from child_env import child_env

psutil = pytest.importorskip("psutil")


PARENT = r"""
import multiprocessing as mp, threading, time, sys
from cai.backends.lifeline import arm

def sleeper():
    time.sleep(600)

def with_grandchild():
    mp.get_context("fork").Process(target=sleeper, daemon=False).start()
    time.sleep(600)

if __name__ == "__main__":
    arm()
    procs = [mp.get_context("fork").Process(target=with_grandchild),
             mp.get_context("spawn").Process(target=sleeper)]
    for p in procs:
        p.start()
    # a fork from a thread that then ends: PDEATHSIG would fire early; the watchdog must not
    def fork_from_thread():
        p = mp.get_context("fork").Process(target=sleeper)
        p.start()
        procs.append(p)
    t = threading.Thread(target=fork_from_thread)
    t.start(); t.join()
    print("started", flush=True)
    time.sleep(600)
"""


def _tree(pid: int, want: int, timeout: float = 30) -> list:
    root = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = root.children(recursive=True)
        if len(kids) >= want:
            return kids
        time.sleep(0.1)
    raise AssertionError(f"only {len(root.children(recursive=True))} of {want} children started")


def _alive(procs) -> list:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_children_die_within_seconds_of_a_sigkilled_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = child_env()
    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    tree: list = []
    try:
        assert parent.stdout.readline().strip() == "started"
        # fork child + its grandchild, spawn child (+ spawn's resource tracker), thread-fork child
        tree = _tree(parent.pid, 4)
        time.sleep(2.0)  # the thread that forked is gone: the child must still be alive
        assert len(_alive(tree)) == len(tree)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while _alive(tree) and time.monotonic() - killed < 15:
            time.sleep(0.1)
        left = _alive(tree)
        assert not left, [(p.pid, p.cmdline()) for p in left]
        assert time.monotonic() - killed < 10
    finally:  # whatever the outcome, leave no process of ours behind
        if parent.poll() is None:
            tree += psutil.Process(parent.pid).children(recursive=True)
            parent.kill()
        for p in _alive(tree):
            p.kill()
