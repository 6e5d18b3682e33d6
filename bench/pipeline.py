"""Pipeline throughput vs raw vLLM: how much does respond -> critique -> revise cost
beyond the generation itself?

    python bench/pipeline.py [--prompts 64] [--max-tokens 128] [--rounds 1]

1. One vLLM engine (its start is excluded), one warm-up batch.
2. `run_generate` on the first --prompts red-team train prompts with the harmless
   constitution (few-shot on, fresh run directory): pipeline throughput = generated tokens
   of all stages / wall time of the whole call (loading prompts, principle sampling, quality
   checks, shard and output writes included).
3. Raw vLLM: ONE `LLM.generate` call doing the same work: every prompt the pipeline sent
   (responses, critiques and revisions, rebuilt from the records), each generating exactly
   as many tokens as it did in the pipeline (min_tokens = max_tokens, EOS ignored). The
   prefix cache is reset before each measurement so neither reuses the other's prompts.
   What the ratio measures is the cost of the pipeline's structure: dependent stages (a
   stage waits for the slowest request of the previous one), smaller batches, Python work.
Also printed, for context: raw throughput on the same token count with the short
response prompts only. Figures are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pipeline_requests(run: Path) -> list[tuple[list[dict], int]]:
    """(conversation, generated tokens) of every request the pipeline made, from its records."""
    import pyarrow.parquet as pq

    from cai.constitution import load_constitution
    from cai.prompting import critique_messages, response_messages, revision_messages

    c = load_constitution("harmless")
    rows = [r for f in sorted((run / "revisions").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    out = []
    for r in rows:
        out.append((response_messages(c, r["prompt"]), r["response_tokens"]))
        current = r["initial_response"]
        for rd in r["rounds"]:
            p = c.principle(rd["principle_id"])
            if rd["critique"] is None:
                break
            out.append((critique_messages(c, p, r["prompt"], current), rd["critique_tokens"]))
            if rd["revision"] is None:
                break
            out.append((revision_messages(c, p, r["prompt"], current, rd["critique"]),
                        rd["revision_tokens"]))
            current = rd["revision"]
    return out


def raw_same_work(engine, run: Path, expect: int) -> tuple[int, float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from cai.backends.text import encode

    reqs = [(c, n) for c, n in pipeline_requests(run) if n > 0]
    prompts = [TokensPrompt(prompt_token_ids=encode(engine.tokenizer, engine.render_chat(c)))
               for c, _ in reqs]
    params = [SamplingParams(temperature=0.7, max_tokens=n, min_tokens=n, ignore_eos=True)
              for _, n in reqs]
    start = time.perf_counter()
    outs = engine.llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs), seconds


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
    from cai.prompts import load_prompts
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
        engine.llm.reset_prefix_cache()
        start = time.perf_counter()
        summary = run_generate(cfg, backend=engine)
        pipe_s = time.perf_counter() - start
        pipe_tokens = summary["tokens"]["total"]
        requests = sum(summary["requests"].values())

        engine.llm.reset_prefix_cache()
        raw_tokens, raw_s = raw_same_work(engine, Path(tmp) / "run", requests)

        per_request = math.ceil(pipe_tokens / requests)
        short = [convs[i % len(convs)] for i in range(requests)]
        engine.llm.reset_prefix_cache()
        start = time.perf_counter()
        outs = engine.generate(short, SamplingConfig(temperature=0.7, max_tokens=per_request,
                                                     ignore_eos=True))
        short_s = time.perf_counter() - start
        short_tokens = sum(len(g.token_ids) for gs in outs for g in gs)

    pipe_tps, raw_tps = pipe_tokens / pipe_s, raw_tokens / raw_s
    result = {
        "prompts": args.prompts, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "pipeline": {"tokens": pipe_tokens, "requests": requests, "seconds": round(pipe_s, 2),
                     "tokens_per_s": round(pipe_tps, 1), "in_engine_s": summary["generate_s"],
                     "status": summary["status"]},
        "raw": {"tokens": raw_tokens, "requests": requests, "seconds": round(raw_s, 2),
                "tokens_per_s": round(raw_tps, 1)},
        "raw_short_prompts": {"tokens": short_tokens, "seconds": round(short_s, 2),
                              "tokens_per_s": round(short_tokens / short_s, 1)},
        "ratio": round(pipe_tps / raw_tps, 3),
    }
    print(json.dumps(result, indent=2))
    print(f"pipeline {pipe_tps:.1f} tok/s vs raw vLLM {raw_tps:.1f} tok/s: "
          f"ratio {pipe_tps / raw_tps:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
