"""PPO benchmark: ours (transformers rollouts), ours (vLLM rollouts) and TRL 1.12's PPOTrainer
on one small real config, at equal work.

    flock /tmp/cai-vllm.lock python bench/ppo.py [--reward RM_DIR] [--iterations 4]

Embedded model (SmolLM2-135M-Instruct), LoRA policy (r=16, all linear layers), a full value
model initialised from the reward model (TRL trains its value model fully; ours is set to do
the same here), 16 prompts x 64 new tokens per iteration, temperature 0.7, fixed β,
PPO epochs x 1 minibatch of 16 (micro-batches of 4, one optimizer step per minibatch; no-grad
scoring passes of 16 rows on both sides). Each runner runs in its own process;
TRL runs from a throwaway venv (/tmp/trl112-venv: `pip install --no-deps trl==1.12.0`, with a
.pth onto the project's site-packages so torch/transformers/peft are the same builds).
Prints seconds per iteration (rollout / score / update for ours; rollout / rest for TRL,
whose loop only lets us time generation separately), the reward gain (mean RM score of the
last iteration minus the first), and the ratios.

Without --reward, the reward model is the embedded model's weights under a fresh
sequence-classification head (seeded): a fixed, arbitrary but learnable scorer.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import add_precision_flag, resolve_precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = Path("/tmp/trl112-venv")
PROMPTS = ROOT / "pipelines" / "prompts" / "helpful_train.jsonl"
# our runners: (rollout backend, LoRA value model, attention). ours-lora-value is ours' default
# with --lora, less work than TRL's fully trained value model. ours-sdpa keeps the models'
# default attention kernel (SDPA), as TRL does, where ours picks eager on a CPU (`auto`).
OURS = {"ours-transformers": ("transformers", False, "auto"), "ours-vllm": ("vllm", False, "auto"),
        "ours-lora-value": ("transformers", True, "auto"), "ours-sdpa": ("transformers", False, "sdpa")}


def ensure_trl_venv() -> Path:
    py = TRL_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys._base_executable if hasattr(sys, "_base_executable") else sys.executable,
                        "-m", "venv", str(TRL_VENV)], check=True)
        site = next((TRL_VENV / "lib").glob("python3*/site-packages"))
        here = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
        (site / "cai-main.pth").write_text(here + "\n")
    ok = subprocess.run([str(py), "-c", "import trl, sys; sys.exit(trl.__version__ != '1.12.0')"],
                        capture_output=True)
    if ok.returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "trl==1.12.0"], check=True)
    return py


def build_quick_rm(target: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.models import pull

    if (target / "config.json").exists():
        return target
    base = pull()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def bench_prompts(out: Path, n: int) -> Path:
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()][:n]
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ runners (child processes)

def run_ours(args) -> dict:
    from cai.models import pull
    from cai.train.ppo import PPOConfig, run_ppo

    out = Path(args.out) / args.child
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cfg = PPOConfig(model=args.policy or str(pull()), reward=args.reward, prompts=args.prompts, out=str(out),
                    iterations=args.iterations, rollout_batch_size=16, max_tokens=64,
                    temperature=0.7, backend=None if args.backend == "auto" else args.backend,
                    ppo_epochs=args.ppo_epochs,
                    minibatch_size=16, micro_batch_size=4, forward_batch_size=16,
                    attn_implementation=args.attn, lr=3e-5, kl_coef=0.05,
                    lora_r=16, value_lora=args.value_lora, missing_eos_penalty=1.0, save_every=10_000, cpu=True,
                    mixed_precision=args.mixed_precision, progress=False)
    run_ppo(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"iterations": [{"total": r["time/iteration"], "rollout": r["time/rollout"],
                            "push": r["time/push_weights"], "score": r["time/score"],
                            "update": r["time/update"], "reward": r["reward/raw"], "kl": r["kl"],
                            "length": r["response/length"]}
                           for r in rows if "reward/raw" in r]}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from cai.models import pull

    base = args.policy or str(pull())
    tok = AutoTokenizer.from_pretrained(base, padding_side="left")
    # TRL's PPO masks every prompt token equal to the pad id; SmolLM2 pads with <|im_end|>,
    # which the chat template puts in every prompt. A distinct pad token, as TRL's own PPO
    # example adds, keeps the prompts intact (pad ids are replaced by 0 before the model).
    tok.add_special_tokens({"pad_token": "[PAD]"})
    eos = tok.eos_token_id
    prompts = [json.loads(x)["prompt"] for x in Path(args.prompts).read_text().splitlines()]
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True), add_special_tokens=False)["input_ids"]
           for p in prompts]
    dataset = Dataset.from_dict({"input_ids": ids})
    timings = {"rollout": [], "step_end": [], "scores": []}
    original = ppo_mod.batch_generation

    def timed_generation(*a, **k):
        t0 = time.perf_counter()
        result = original(*a, **k)
        timings["rollout"].append(time.perf_counter() - t0)
        # response tokens up to and including the first EOS (what ours counts as response/length)
        resp = result[0][:, a[1].shape[1]:]  # a[1]: the left-padded queries
        is_eos = resp == eos
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1,
                            (resp != tok.pad_token_id).sum(1))
        timings.setdefault("tokens", []).append(first.float().mean().item())
        return result

    ppo_mod.batch_generation = timed_generation

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            timings.setdefault("step_begin", []).append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                timings["scores"].append(logs["objective/scores"])
                timings["step_end"].append(time.perf_counter())

    # TRL 1.12's rollout batch is per_device_train_batch_size x gradient_accumulation_steps
    # (num_mini_batches splits it; it does not multiply it): 4 x 4 = 16 prompts, one minibatch
    # of 16 in micro-batches of 4, one optimizer step per minibatch, as ours is set up.
    cfg = PPOConfig(output_dir=str(Path(args.out) / "trl"), per_device_train_batch_size=4,
                    gradient_accumulation_steps=4, num_mini_batches=1, num_ppo_epochs=args.ppo_epochs,
                    total_episodes=16 * args.iterations, local_rollout_forward_batch_size=16,
                    response_length=64, temperature=0.7, stop_token="eos", missing_eos_penalty=1.0,
                    learning_rate=3e-5, kl_coef=0.05, num_sample_generations=0, report_to="none",
                    save_strategy="no", use_cpu=True, logging_steps=1, seed=0, lr_scheduler_type="constant",
                    bf16=args.mixed_precision == "bf16")
    policy = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=torch.float32)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=dataset, value_model=value, callbacks=[Clock()],
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    t_start = time.perf_counter()
    trainer.train()
    ends = timings["step_end"]
    starts = [t_start] + ends[:-1]
    return {"iterations": [{"total": e - s, "rollout": r, "reward": sc, "length": n}
                           for s, e, r, sc, n in zip(starts, ends, timings["rollout"], timings["scores"],
                                                     timings["tokens"])]}


# ------------------------------------------------------------------ driver

def child(runner: str, args, python: str) -> dict:
    out = Path(args.out) / f"{runner}.json"
    cmd = [python, __file__, "--child", runner, "--reward", args.reward, "--prompts", args.prompts,
           "--out", args.out, *(["--policy", args.policy] if args.policy else []), "--iterations", str(args.iterations), "--ppo-epochs", str(args.ppo_epochs),
           "--mixed-precision", args.mixed_precision]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{runner} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["wall"] = time.perf_counter() - t0
    return result


def summarise(name: str, result: dict) -> dict:
    its = result["iterations"]
    steady = its[1:] or its  # the first iteration pays one-off costs (allocation, caches)
    mean = lambda key: statistics.fmean(i[key] for i in steady) if key in steady[0] else float("nan")  # noqa: E731
    return {"runner": name, "s_per_iter": mean("total"), "rollout": mean("rollout"),
            "score": mean("score"), "update": mean("update"), "push": mean("push"),
            "length": mean("length"),
            "reward_first": its[0]["reward"], "reward_last": its[-1]["reward"],
            "reward_gain": its[-1]["reward"] - its[0]["reward"], "iterations": len(its),
            "wall": result.get("wall", float("nan"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=[*OURS, "trl"])
    ap.add_argument("--policy", default=None, help="policy dir (default: the embedded model; "
                                                   "a tiny model checks the runners quickly)")
    ap.add_argument("--reward", default=None, help="reward model dir (default: quick RM, see docstring)")
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--out", default="/tmp/cai-bench-ppo")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    add_precision_flag(ap)
    ap.add_argument("--runners", default="ours-transformers,ours-vllm,trl",
                    help=f"comma-separated, from {', '.join([*OURS, 'trl'])}; run in this "
                         "order (repeat names to interleave runs)")
    args = ap.parse_args()
    args.mixed_precision = resolve_precision(args.mixed_precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        if args.child == "trl":
            result = run_trl(args)
        else:
            args.backend, args.value_lora, args.attn = OURS[args.child]
            result = run_ours(args)
        (out / f"{args.child}.json").write_text(json.dumps(result))
        return

    args.reward = str(Path(args.reward).resolve()) if args.reward else str(build_quick_rm(out / "quick-rm"))
    args.prompts = args.prompts or str(bench_prompts(out, 16 * args.iterations))
    runners = args.runners.split(",")
    rows = []
    for runner in runners:
        python = str(ensure_trl_venv()) if runner == "trl" else sys.executable
        print(f"running {runner} ...", flush=True)
        rows.append(summarise(runner, child(runner, args, python)))
    print(f"\nPPO, embedded model, LoRA, 16 prompts x 64 new tokens, {args.iterations} iterations, "
          f"{args.ppo_epochs} PPO epochs, mixed precision {args.mixed_precision} on both sides; seconds per iteration (mean of iterations 2..{args.iterations})")
    print(f"{'runner':<20}{'s/iter':>9}{'rollout':>9}{'(push)':>8}{'score':>8}{'update':>8}"
          f"{'resp len':>10}{'reward 1st':>12}{'last':>9}{'gain':>8}{'run wall':>10}")
    for r in rows:
        print(f"{r['runner']:<20}{r['s_per_iter']:>9.1f}{r['rollout']:>9.1f}{r['push']:>8.2f}{r['score']:>8.1f}"
              f"{r['update']:>8.1f}{r['length']:>10.1f}{r['reward_first']:>12.3f}{r['reward_last']:>9.3f}"
              f"{r['reward_gain']:>8.3f}{r['wall']:>10.0f}")
    print("resp len: mean response tokens (to the first EOS) per rollout; the work per iteration "
          "scales with it, so compare speed at similar lengths")
    print("run wall: the whole child process, seconds (imports, model loading, the vLLM engine's "
          "start, every iteration)")
    # a runner named more than once (interleaved runs, against the machine's drift): its mean
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["runner"], []).append(r["s_per_iter"])
    if "trl" in by:
        trl = statistics.fmean(by["trl"])
        for name in OURS:
            if name in by:
                print(f"speed-up {name} vs TRL 1.12: {trl / statistics.fmean(by[name]):.2f}x "
                      f"(runs: {len(by[name])} vs {len(by['trl'])})")
                # the machine's speed drifts between runs: each of our runs against the TRL run
                # next to it (the one after, else the one before) says more than the means do
                pairs = [rows[j]["s_per_iter"] / r["s_per_iter"] for i, r in enumerate(rows)
                         if r["runner"] == name
                         for j in [next((j for j in (i + 1, i - 1)
                                         if 0 <= j < len(rows) and rows[j]["runner"] == "trl"), None)]
                         if j is not None]
                if len(pairs) > 1:
                    print(f"  adjacent pairs: {', '.join(f'{x:.2f}x' for x in pairs)}; "
                          f"median {statistics.median(pairs):.2f}x")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
