"""Generation throughput: the same workload through vLLM and transformers.

    python bench/generation.py [--prompts 64] [--max-tokens 128]

Every prompt generates exactly --max-tokens new tokens (EOS ignored) so both backends do
the same work. Engine start and model load are excluded; each backend gets one warm-up
batch first. Prints tokens/s for each and the vLLM / transformers ratio.
"""

from __future__ import annotations

import argparse
import json
import time

TOPICS = [
    "photosynthesis", "the French revolution", "binary search", "compound interest", "volcanoes",
    "the water cycle", "TCP handshakes", "sourdough bread", "black holes", "vaccines",
    "the Roman senate", "recursion", "plate tectonics", "inflation", "jazz improvisation",
    "the immune system", "hash tables", "climate models", "the printing press", "chess openings",
    "solar panels", "the stock market", "DNA replication", "the Silk Road", "public key cryptography",
    "coral reefs", "supply and demand", "the Apollo program", "neural networks", "tides",
    "the Renaissance", "electric motors",
]
STYLES = ["Explain {} to a curious twelve-year-old.", "Write a short paragraph about {}."]


def workload(n: int) -> list[list[dict]]:
    prompts = [s.format(t) for t in TOPICS for s in STYLES]
    while len(prompts) < n:
        prompts += prompts
    return [[{"role": "user", "content": p}] for p in prompts[:n]]


def measure(backend, convs, sampling) -> dict:
    backend.generate(convs[:4], sampling)  # warm-up: first-call allocations and compiles
    start = time.perf_counter()
    outs = backend.generate(convs, sampling)
    wall = time.perf_counter() - start
    tokens = sum(len(g.token_ids) for gens in outs for g in gens)
    return {"backend": backend.name, "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", default=None)
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without graph compile")
    ap.add_argument("--vllm-dtype", default="auto")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()

    from cai.backends import SamplingConfig, load_backend

    convs = workload(args.prompts)
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    results = []
    with load_backend("vllm", args.model, enforce_eager=args.enforce_eager, dtype=args.vllm_dtype) as engine:
        results.append(measure(engine, convs, sampling))
    print(json.dumps(results[-1]), flush=True)
    if args.skip_transformers:
        return
    with load_backend("transformers", args.model, batch_size=args.hf_batch_size) as engine:
        results.append(measure(engine, convs, sampling))
    print(json.dumps(results[-1]), flush=True)
    ratio = results[0]["tokens_per_s"] / results[1]["tokens_per_s"]
    print(f"workload: {args.prompts} prompts x {args.max_tokens} new tokens")
    for r in results:
        print(f"{r['backend']:>12}: {r['tokens_per_s']:8.1f} tok/s ({r['tokens']} tokens in {r['seconds']} s)")
    print(f"ratio vllm/transformers: {ratio:.2f}x (target >= 1.2x)")


if __name__ == "__main__":
    main()
