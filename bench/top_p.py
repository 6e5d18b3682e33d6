"""vLLM on a CPU: top-p through vLLM's sort of the vocabulary against cai's (vllm_top_p).

One in-process engine on the embedded model (so the sampler runs in this process and both
functions can be swapped in), the demo's 64 training prompts answered as its generate stage
answers them (T 0.7, top_p 0.9, 128 tokens, seed 0). The runs alternate, sort / cai / cai /
sort, because this machine's speed drifts; the bench prints each run's tokens/s, the ratio
of the sums, and whether every sampled token agrees.

    .venv/bin/python bench/top_p.py [--top-p 0.9] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine, and its sampler, in-process

ROOT = Path(__file__).resolve().parent.parent


def prompts(tokenizer_backend) -> list:
    from vllm.inputs import TokensPrompt

    from cai.backends.text import encode

    rows = [json.loads(line) for line in open(ROOT / "pipelines/prompts/red_team_train.jsonl")][:40]
    rows += [json.loads(line) for line in open(ROOT / "pipelines/prompts/helpful_train.jsonl")][:24]
    return [TokensPrompt(prompt_token_ids=encode(tokenizer_backend.tokenizer,
                                                 tokenizer_backend.render_chat(
                                                     [{"role": "user", "content": r["prompt"]}])))
            for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    from vllm import SamplingParams
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    from cai.backends.vllm_backend import VLLMBackend

    backend = VLLMBackend(None, gpu_memory_utilization=0.3)  # imports cai's worker: installed
    ours = sampler.apply_top_k_top_p
    assert getattr(ours, "cai_top_p", False), "cai's top-p is not installed in this process"
    sort = {"vLLM sort": ours.original, "cai": ours}
    batch = prompts(backend)
    params = SamplingParams(temperature=0.7, top_p=a.top_p, max_tokens=a.max_tokens, seed=0)
    backend.llm.generate(batch[:8], SamplingParams(max_tokens=8), use_tqdm=False)  # warm
    seconds = {name: 0.0 for name in sort}
    tokens: dict[str, list] = {}
    for name in ["vLLM sort", "cai", "cai", "vLLM sort"]:
        sampler.apply_top_k_top_p = sort[name]
        t = time.perf_counter()
        out = backend.llm.generate(batch, params, use_tqdm=False)
        dt = time.perf_counter() - t
        ids = [list(o.outputs[0].token_ids) for o in out]
        n = sum(map(len, ids))
        seconds[name] += dt
        if tokens.setdefault(name, ids) != ids:
            print(f"  {name}: the two runs differ (seeded sampling should repeat)")
        print(f"{name:10s} {n} tokens in {dt:6.1f} s = {n / dt:6.1f} tok/s", flush=True)
    sampler.apply_top_k_top_p = ours
    same = tokens["cai"] == tokens["vLLM sort"]
    print(f"vLLM sort {seconds['vLLM sort']:.1f} s, cai {seconds['cai']:.1f} s over two runs each: "
          f"{seconds['vLLM sort'] / seconds['cai']:.2f}x; sampled tokens "
          f"{'identical' if same else 'DIFFER'} ({len(batch)} answers)")
    backend.close()


if __name__ == "__main__":
    main()
