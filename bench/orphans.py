"""Measure what a SIGKILLed `cai` leaves behind: start `cai generate` (or `cai serve`) with the
vLLM backend, SIGKILL it once it is working, then watch every process of its tree (collected
before the kill) for up to --watch seconds: how long each lives on and how much RSS it holds.
Survivors are killed at the end (they are ours). Run it under the vLLM lock:

    flock /tmp/cai-vllm.lock python bench/orphans.py generate
    flock /tmp/cai-vllm.lock python bench/orphans.py serve
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(mode: str, work: Path, port: int) -> list[str]:
    # `cai.cli.main` rather than `-m cai`: trees from before `cai/__main__.py` run too
    base = [sys.executable, "-c", "from cai.cli import main; main()"]
    if mode == "generate":
        return base + ["generate", "--prompts", str(REPO / "pipelines/prompts/red_team_train.jsonl"),
                       "-o", str(work / "run"), "--backend", "vllm",
                       "--backend-option", "gpu_memory_utilization=0.3", "--limit", "12", "--chunk-size", "4",
                       "--max-tokens", "32", "--no-few-shot", "--no-progress"]
    return base + ["serve", "--backend", "vllm", "--gpu-memory-utilization", "0.3",
                   "--port", str(port)]


def ready(mode: str, work: Path, port: int) -> bool:
    if mode == "generate":
        return any((work / "run" / "revisions").glob("part-*.parquet"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
            return True
    except OSError:
        return False


def alive(procs: dict[int, psutil.Process]) -> dict[int, psutil.Process]:
    out = {}
    for pid, p in procs.items():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out[pid] = p
        except psutil.NoSuchProcess:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["generate", "serve"])
    ap.add_argument("--watch", type=float, default=60.0)
    ap.add_argument("--src", default=str(REPO), help="the cai source tree to run (PYTHONPATH)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"orphans-{args.mode}-", dir="/tmp/reliability"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": args.src}
    cmd = command(args.mode, work, port)
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=args.src, env=env, stdout=open(work / "out.log", "w"),
                            stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    tree: dict[int, psutil.Process] = {}
    while not ready(args.mode, work, port):
        if proc.poll() is not None:
            sys.exit(f"the command ended early (rc {proc.returncode}); see {work}/out.log")
        if time.monotonic() - t0 > 300:
            proc.kill()
            sys.exit("not ready after 300 s")
        for c in root.children(recursive=True):
            tree[c.pid] = c
        time.sleep(0.2)
    for c in root.children(recursive=True):
        tree[c.pid] = c
    tree = alive(tree)  # short-lived helpers seen during the start are gone by now
    print(f"ready after {time.monotonic() - t0:.1f} s; tree of pid {proc.pid}:", flush=True)
    for pid, p in tree.items():
        try:
            print(f"  {pid} ppid {p.ppid()} {p.name()!r} rss {p.memory_info().rss / 2**20:.0f} MiB")
        except psutil.NoSuchProcess:
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    print("SIGKILL sent to", proc.pid, flush=True)
    last = None
    while True:
        t = time.monotonic() - killed
        live = alive(tree)
        rss = 0
        cpu = 0.0
        for p in live.values():
            try:
                rss += p.memory_info().rss
                cpu += p.cpu_percent(interval=None)
            except psutil.NoSuchProcess:
                pass
        line = (f"t={t:5.1f} s  alive {len(live)}: "
                + ", ".join(f"{pid} ppid {p.ppid()} {p.name()}" for pid, p in live.items())
                + f"  rss {rss / 2**20:.0f} MiB cpu {cpu:.0f}%")
        if line.split(":", 1)[1] != last or not live:
            print(line, flush=True)
            last = line.split(":", 1)[1]
        if not live:
            print(f"RESULT {args.mode}: every process of the tree gone {t:.1f} s after SIGKILL")
            break
        if t > args.watch:
            print(f"RESULT {args.mode}: {len(live)} processes still alive {t:.0f} s after "
                  f"SIGKILL, holding {rss / 2**20:.0f} MiB RSS; killing them now")
            for p in live.values():
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            break
        time.sleep(1.0)


if __name__ == "__main__":
    main()
