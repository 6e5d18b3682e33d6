"""How far the PPO sampler's log-probs are from the trainer's rescoring, per rollout dtype.

    python bench/rollout_gap.py --policy outputs/demo/sft --reward outputs/demo/rm \
        [--prompts pipelines/prompts/red_team_train.jsonl] [--dtypes policy bf16]

Runs two PPO iterations (LoRA, 16 prompts x 64 new tokens, T = 0.7, bf16 scoring) once per
`rollout_dtype` and prints `rollout/engine_logprob_gap` (mean |sampler log-prob - rescored
log-prob| per response token), the rollout time and the response length. `policy` samples
with the fp32 policy itself, `bf16` with the bf16 copy (LoRA merged): a copy that adds no
error beyond the bf16 scoring's rounding shows about the same gap as `policy`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--reward", required=True)
    ap.add_argument("--prompts", default=str(ROOT / "pipelines" / "prompts" / "red_team_train.jsonl"))
    ap.add_argument("--dtypes", nargs="+", default=["policy", "bf16"])
    ap.add_argument("--out", default="/tmp/cai-bench-rollout-gap")
    args = ap.parse_args()

    from cai.train.ppo import PPOConfig, run_ppo

    for dtype in args.dtypes:
        out = Path(args.out) / dtype
        shutil.rmtree(out, ignore_errors=True)
        cfg = PPOConfig(model=args.policy, reward=args.reward, prompts=args.prompts, out=str(out),
                        iterations=2, rollout_batch_size=16, minibatch_size=16, micro_batch_size=4,
                        max_tokens=64, temperature=0.7, lora_r=16, cpu=True, rollout_dtype=dtype,
                        ppo_epochs=1, lr=5e-5, mixed_precision="bf16", progress=False)
        run_ppo(cfg)
        for line in (out / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            if "reward/raw" in r:
                print(f"{dtype:<8} iteration {r['iteration']}: gap {r['rollout/engine_logprob_gap']:.4f} nats/token, "
                      f"rollout {r['time/rollout']:.1f} s, response {r['response/length']:.1f} tokens", flush=True)


if __name__ == "__main__":
    main()
