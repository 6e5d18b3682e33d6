"""Pipeline throughput vs raw vLLM: how much does respond -> critique -> revise cost
beyond the generation itself?

    python bench/pipeline.py [--prompts 64] [--max-tokens 128] [--rounds 1]

1. One vLLM engine (its start is excluded), one warm-up batch.
2. `run_generate` on the first --prompts red-team train prompts with the harmless
   constitution (few-shot on, fresh run directory): pipeline throughput = generated tokens
   of all stages / wall time of the whole call (loading prompts, principle sampling, quality
   checks, shard and output writes included).
3. Raw: ONE `generate` call producing the same number of tokens (as many requests as the
   pipeline made, each exactly tokens/requests new tokens, EOS ignored).
Prints both and pipeline/raw (target >= 0.9). The ratio is noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    args = ap.parse_args()

    from cai.backends import SamplingConfig, load_backend
    from cai.generate.config import GenerateConfig
    from cai.generate.inputs import load_prompts
    from cai.generate.run import run_generate

    prompts_file = REPO / "pipelines/prompts/red_team_train.jsonl"
    with load_backend("vllm", args.model, gpu_memory_utilization=args.gpu_memory_utilization) as engine, \
            tempfile.TemporaryDirectory() as tmp:
        items, _ = load_prompts(prompts_file, limit=args.prompts)
        convs = [it.messages for it in items]
        engine.generate(convs[:8], SamplingConfig(max_tokens=16))  # warm-up

        cfg = GenerateConfig(prompts=str(prompts_file), out=f"{tmp}/run", limit=args.prompts,
                             rounds=args.rounds, max_tokens=args.max_tokens, temperature=0.7,
                             chunk_size=max(256, args.prompts), progress=False)
        start = time.perf_counter()
        summary = run_generate(cfg, backend=engine)
        pipe_s = time.perf_counter() - start
        pipe_tokens = summary["tokens"]["total"]
        requests = sum(summary["requests"].values())

        per_request = math.ceil(pipe_tokens / requests)
        raw_convs = [convs[i % len(convs)] for i in range(requests)]
        start = time.perf_counter()
        outs = engine.generate(raw_convs, SamplingConfig(temperature=0.7, max_tokens=per_request,
                                                         ignore_eos=True))
        raw_s = time.perf_counter() - start
        raw_tokens = sum(len(g.token_ids) for gs in outs for g in gs)

    pipe_tps, raw_tps = pipe_tokens / pipe_s, raw_tokens / raw_s
    result = {
        "prompts": args.prompts, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "pipeline": {"tokens": pipe_tokens, "requests": requests, "seconds": round(pipe_s, 2),
                     "tokens_per_s": round(pipe_tps, 1), "in_engine_s": summary["generate_s"],
                     "status": summary["status"]},
        "raw": {"tokens": raw_tokens, "requests": requests, "seconds": round(raw_s, 2),
                "tokens_per_s": round(raw_tps, 1)},
        "ratio": round(pipe_tps / raw_tps, 3),
    }
    print(json.dumps(result, indent=2))
    print(f"pipeline {pipe_tps:.1f} tok/s vs raw vLLM {raw_tps:.1f} tok/s: "
          f"ratio {pipe_tps / raw_tps:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
