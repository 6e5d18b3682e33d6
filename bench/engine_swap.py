"""A vLLM engine start against a weights swap into a running engine (issue 29).

The demo's three models (base, SFT, PPO policy) share one architecture and tokenizer, so
`cai run` keeps one engine and swaps their weights in (`cai.backends.vllm_swap`). This
times, in one process, on the embedded model: the first engine start (imports included),
`--swaps` swaps of another checkpoint in and back out (`VLLMBackend.load_weights`: vLLM's
reload_weights, the CPU LM head repacked, the prefix cache emptied), and a second engine
start on the other checkpoint (what the pool would pay without swapping). Prints each and
the ratio swap / second start.

    flock /tmp/cai-vllm.lock python bench/engine_swap.py [--other outputs/demo/sft] [--swaps 4]

Without `--other`, the other checkpoint is outputs/demo/sft when it exists, else a copy of
the embedded model (the same bytes: a swap reads and repacks them all the same).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

OPTIONS = {"gpu_memory_utilization": 0.2}
CONVERSATION = [[{"role": "user", "content": "What is the capital of France?"}]]


def other_checkpoint(given: str | None, base: Path, tmp: Path) -> str:
    if given:
        return str(Path(given).resolve())
    if Path("outputs/demo/sft/model.safetensors").is_file():
        return str(Path("outputs/demo/sft").resolve())
    for f in base.iterdir():
        if f.is_file():
            (tmp / f.name).symlink_to(f)
    return str(tmp)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", help="a checkpoint of the embedded model's architecture")
    ap.add_argument("--swaps", type=int, default=4, help="swaps timed (half of them back)")
    a = ap.parse_args()

    from cai.backends import SamplingConfig
    from cai.backends.vllm_backend import VLLMBackend
    from cai.models import pull

    base = pull()
    greedy = SamplingConfig(temperature=0.0, max_tokens=16)
    with tempfile.TemporaryDirectory() as tmp:
        other = other_checkpoint(a.other, base, Path(tmp))
        t = time.perf_counter()
        engine = VLLMBackend(str(base), **OPTIONS)
        first_start = time.perf_counter() - t
        answers = {str(base): engine.generate(CONVERSATION, greedy)[0][0].text}
        swaps = []
        for i in range(a.swaps):
            target = other if i % 2 == 0 else str(base)
            t = time.perf_counter()
            engine.load_weights(target)
            swaps.append(time.perf_counter() - t)
            answers.setdefault(target, engine.generate(CONVERSATION, greedy)[0][0].text)
        engine.close()
        t = time.perf_counter()
        fresh = VLLMBackend(other, **OPTIONS)
        second_start = time.perf_counter() - t
        fresh_answer = fresh.generate(CONVERSATION, greedy)[0][0].text
        fresh.close()
    swap = statistics.median(swaps)
    print(f"other checkpoint: {other}")
    print(f"engine start, first (imports included): {first_start:6.1f} s")
    print(f"engine start, second (on the other):    {second_start:6.1f} s")
    print(f"weights swap, median of {len(swaps)}:           {swap:6.2f} s "
          f"({', '.join(f'{s:.2f}' for s in swaps)})")
    print(f"ratio swap / second start: {swap / second_start:.3f} "
          f"({second_start / swap:.0f}x faster)")
    print(f"swapped-in answer equals a fresh engine's: {answers[other] == fresh_answer}")


if __name__ == "__main__":
    main()
