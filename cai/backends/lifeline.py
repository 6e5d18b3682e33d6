"""Engine processes die with the process that started them, however it dies (SIGKILL too).

vLLM runs its engine (`VLLM::EngineCore`, and `VLLM::Worker`s under it) in child processes.
vLLM 0.32 ties a worker to EngineCore (a pipe that closes when EngineCore dies) but nothing
ties EngineCore to the process that built the `LLM`: after a `kill -9`, an OOM kill or a
crash of `cai generate`, EngineCore is re-parented to PID 1 and lives on, holding its
memory (measured: bench/orphans.py). `arm()` closes that gap for every child the process
starts from then on:

- forked children (vLLM's default start method) get, from an `os.register_at_fork` hook:
  `prctl(PR_SET_PDEATHSIG, SIGTERM)`, so the kernel signals them the moment their parent
  dies (only for forks from the main thread: the signal follows the forking *thread*), and
  a watchdog thread that polls `getppid()` and, once the parent is gone, sends SIGTERM and,
  if the process still runs 5 s later, SIGKILL. SIGTERM first lets vLLM shut down in order
  (it frees its shared memory); SIGKILL makes sure.
- spawned children (vLLM uses `spawn` once CUDA is initialised, e.g. beside a trained
  policy) run the same watch first thing: the spawn command line is prefixed with it.

Children of children inherit the hook, so each process watches its own parent and a death
anywhere above takes the whole engine tree down within a few seconds. On platforms without
prctl only the watchdog runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_S = 0.5  # how often a child checks that its parent lives
GRACE_S = 5.0  # from SIGTERM to SIGKILL when the process does not exit by itself

_armed = False
_forking_pid: int | None = None  # set in the parent just before each fork
_forking_from_main = False
_prctl = None


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def watch_parent(parent_pid: int, *, pdeathsig: bool = True) -> None:
    """Make this process exit when `parent_pid` (its parent now) is no longer its parent."""
    if pdeathsig and _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)

    def watchdog() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watchdog, name="cai-lifeline", daemon=True).start()


def _before_fork() -> None:
    global _forking_pid, _forking_from_main
    _forking_pid = os.getpid()
    _forking_from_main = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    if _forking_pid is not None:
        watch_parent(_forking_pid, pdeathsig=_forking_from_main)


def _spawn_command_line(original):
    def get_command_line(**kwds):
        cmd = original(**kwds)
        if "-c" in cmd:
            i = cmd.index("-c") + 1
            cmd[i] = ("try:\n import cai.backends.lifeline as _lifeline\n"
                      f" _lifeline._prctl = _lifeline._load_prctl()\n"
                      f" _lifeline.watch_parent({os.getpid()})\n"
                      "except ImportError:\n pass\n" + cmd[i])
        return cmd

    get_command_line.cai_lifeline = True
    return get_command_line


def arm() -> None:
    """From now on, every child process of this process exits when this process dies.
    Idempotent; call it before starting an engine."""
    global _armed, _prctl
    if _armed:
        return
    _armed = True
    _prctl = _load_prctl()
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    import multiprocessing.spawn as spawn

    if not getattr(spawn.get_command_line, "cai_lifeline", False):
        spawn.get_command_line = _spawn_command_line(spawn.get_command_line)
