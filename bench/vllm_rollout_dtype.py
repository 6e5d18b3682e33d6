"""vLLM PPO rollouts per engine dtype: the embedded model, 16 prompts x 64 new tokens
(`ignore_eos`, so every rollout does the same work), weights pushed before each rollout as
`cai train ppo --backend vllm` does. Each dtype runs in its own process (one engine
per process); prints engine start, push and rollout seconds and the ratio.

    flock /tmp/cai-vllm.lock python bench/vllm_rollout_dtype.py [--rollouts 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "pipelines" / "prompts" / "helpful_train.jsonl"


def child(dtype: str, rollouts: int) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # as VLLMRollout: pushes by reference
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from cai.backends.vllm_backend import VLLMBackend
    from cai.models import pull

    base = str(pull())
    tok = AutoTokenizer.from_pretrained(base)
    prompts = [json.loads(x)["prompt"] for x in PROMPTS.read_text().splitlines() if x.strip()][:16]
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True), add_special_tokens=False)["input_ids"]
           for p in prompts]
    t0 = time.perf_counter()
    engine = VLLMBackend(base, gpu_memory_utilization=0.1, max_model_len=1024, dtype=dtype,
                         enable_prefix_caching=False, logprobs_mode="processed_logprobs")
    start = time.perf_counter() - t0
    policy = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pushes, gens = [], []
    for i in range(rollouts):
        t0 = time.perf_counter()
        engine.llm.collective_rpc("reload_weights",
                                  kwargs={"weights_iterator": iter(list(policy.state_dict().items()))})
        pushes.append(time.perf_counter() - t0)
        params = [SamplingParams(temperature=0.7, top_p=1.0, top_k=0, max_tokens=64, seed=1000 * i + j,
                                 logprobs=0, ignore_eos=True) for j in range(len(ids))]
        t0 = time.perf_counter()
        engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
        gens.append(time.perf_counter() - t0)
    return {"start": start, "push": pushes, "rollout": gens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.rollouts)))
        return
    results = {}
    for dtype in args.dtypes.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", dtype, "--rollouts", str(args.rollouts)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{dtype} failed:\n{proc.stderr[-3000:]}")
        results[dtype] = json.loads(line.removeprefix("RESULT "))
    print(f"vLLM rollouts, embedded model, 16 prompts x 64 tokens; mean of rollouts 2..{args.rollouts}")
    print(f"{'dtype':<10}{'start s':>9}{'push s':>8}{'rollout s':>11}")
    steady = {}
    for dtype, r in results.items():
        steady[dtype] = statistics.fmean(r["rollout"][1:] or r["rollout"])
        print(f"{dtype:<10}{r['start']:>9.1f}{statistics.fmean(r['push'][1:] or r['push']):>8.2f}"
              f"{steady[dtype]:>11.2f}")
    if {"float32", "bfloat16"} <= steady.keys():
        print(f"bfloat16 vs float32: {steady['float32'] / steady['bfloat16']:.2f}x faster rollouts")


if __name__ == "__main__":
    main()
