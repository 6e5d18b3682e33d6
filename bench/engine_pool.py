"""Engine starts in `cai run pipelines/demo.yaml`: one engine at a time (before issue 29)
against one engine per model for the whole run (`cai.pipeline.engines.EnginePool`).

Plans the demo with the real stages and configs, then walks its steps through two pools
with engines that only count starts. Memory is simulated: FREE GiB at the start (default:
what this machine has free now), less each open engine's footprint (the real estimate:
the demo's gpu_memory_utilization x RAM on a CPU). "One at a time" is the same pool with no
memory to spare, which closes every idle engine before each step: exactly the old rule.
Prints the starts of each, and the time saved at START_S seconds per start (`--measure`
times one real vLLM start of the embedded model with the demo's options, in a child process).

    .venv/bin/python bench/engine_pool.py [--free-gib 16] [--start-s 35 | --measure]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEASURE = r"""
import sys, time
t0 = time.perf_counter()
from cai.backends import load_backend
b = load_backend("vllm", None, **eval(sys.argv[1]))
print("START_S", time.perf_counter() - t0)
b.close()
"""


class Engine:
    def __init__(self, open_bytes: list[int], size: int) -> None:
        self.open_bytes, self.size = open_bytes, size
        open_bytes.append(size)

    def close(self) -> None:
        self.open_bytes.remove(self.size)


def simulate(steps, free: int, spare: bool) -> tuple[int, list[str]]:
    """(engine starts, what happened) for the demo's steps through one pool."""
    from cai.pipeline.engines import EnginePool, engine_footprint
    from cai.pipeline.runner import step_engines

    open_bytes: list[int] = []
    lines: list[str] = []
    available = (lambda: free - sum(open_bytes)) if spare else (lambda: 0)

    def load(name, model, **options):
        return Engine(open_bytes, engine_footprint(name, model or "", options))

    # one engine per model, as this lever was measured; weight swaps: bench/engine_swap.py
    pool = EnginePool(lines.append, load, available=available, swap_weights=False)
    needs = [[pool.key(*w) for w in step_engines(s).values()] for s in steps]
    for n, step in enumerate(steps):
        lines.append(f"[{step.key}]")
        pool.prepare(needs[n], needs[n + 1:], trains=not needs[n])
        for want in step_engines(step).values():
            pool.get(*want, show_progress=False)
    pool.close()
    return pool.starts, lines


def measure_start(options: dict) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE, repr(options)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return float(next(l for l in out.splitlines() if l.startswith("START_S")).split()[1])


def main() -> None:
    import psutil

    from cai.pipeline import builtin_stages, load_pipeline, plan

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--free-gib", type=float, default=psutil.virtual_memory().available / 2**30)
    ap.add_argument("--start-s", type=float, default=35.0,
                    help="seconds per engine start (issue 29: about 35 s on the 2-core AMD CPU)")
    ap.add_argument("--measure", action="store_true", help="time one real vLLM start instead")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each pool's events")
    args = ap.parse_args()

    stages = builtin_stages()
    pipeline = load_pipeline(ROOT / "pipelines" / "demo.yaml", [s.name for s in stages])
    with tempfile.TemporaryDirectory() as tmp:
        pipeline.run.out = tmp  # the prompt sets plan() writes stay out of the checkout
        steps = plan(pipeline, stages, echo=lambda m: None)
    free = int(args.free_gib * 2**30)
    before, old = simulate(steps, free, spare=False)
    after, new = simulate(steps, free, spare=True)
    start_s = args.start_s
    if args.measure:
        t = time.perf_counter()
        start_s = measure_start(dict(pipeline.run.backend_options))
        print(f"measured one vLLM start of the embedded model: {start_s:.1f} s "
              f"({time.perf_counter() - t:.0f} s with the child's imports and close)")
    if args.verbose:
        print("\n".join(["one engine at a time:", *old, "", "one engine per model:", *new, ""]))
    print(f"demo steps: {', '.join(s.key for s in steps)}; {args.free_gib:.1f} GiB free")
    print(f"engine starts: one at a time {before}, one per model {after} "
          f"(ratio {after / before:.2f})")
    print(f"engine start time: {before * start_s:.0f} s -> {after * start_s:.0f} s at "
          f"{start_s:.1f} s a start: {(before - after) * start_s:.0f} s saved")


if __name__ == "__main__":
    main()
