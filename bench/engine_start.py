"""vLLM on CPU: what torch.compile buys against what it costs at every engine start.

Starts the embedded model once compiled (vLLM's default) and once with `enforce_eager=True`,
each in a fresh process, and times the start and the same greedy generation (prompts x
max_tokens). Prints the start time, decode throughput and the ratio eager/compiled for each.
A pipeline that starts several engines (the demo starts one per model: base, SFT, base
again, policy) pays the start each time.

    .venv/bin/python bench/engine_start.py [--prompts 32] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from cai.backends import load_backend
from cai.backends.base import SamplingConfig
eager, n, max_tokens = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
opts = {"gpu_memory_utilization": 0.3}
if eager:
    opts["enforce_eager"] = True
b = load_backend("vllm", None, **opts)
start = time.perf_counter() - t0
convs = [[{"role": "user", "content": f"Write a short story about a robot named R{i}."}]
         for i in range(n)]
sp = SamplingConfig(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
b.generate(convs[:2], sp)  # warm
t = time.perf_counter()
outs = b.generate(convs, sp)
gen = time.perf_counter() - t
tokens = sum(len(o[0].token_ids) for o in outs)
b.close()
print("RESULT " + json.dumps({"start_s": start, "generate_s": gen, "tokens": tokens,
                              "texts": [o[0].text for o in outs[:3]]}))
"""


def run(eager: bool, n: int, max_tokens: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, "1" if eager else "0", str(n),
                          str(max_tokens)], capture_output=True, text=True)
    line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    if res.returncode or not line:
        sys.exit(f"engine run failed (eager={eager}):\n{res.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    r = {name: run(name == "eager", a.prompts, a.max_tokens) for name in ("compiled", "eager")}
    for name, x in r.items():
        print(f"{name:9} start {x['start_s']:6.1f} s   generate {x['generate_s']:6.1f} s "
              f"({x['tokens']} tokens, {x['tokens'] / x['generate_s']:.0f} tok/s)")
    c, e = r["compiled"], r["eager"]
    print(f"eager/compiled: start time {e['start_s'] / c['start_s']:.2f}x, decode throughput "
          f"{(e['tokens'] / e['generate_s']) / (c['tokens'] / c['generate_s']):.2f}x")
    same = [x == y for x, y in zip(c["texts"], e["texts"])]
    print(f"greedy outputs identical on the first {len(same)} prompts: {same}")


if __name__ == "__main__":
    main()
