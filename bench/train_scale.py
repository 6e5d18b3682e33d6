"""SFT and reward-model training throughput on 2 processes (torchrun, gloo, one thread each)
against 1 process (one thread), on the same global batch, in one run.

    python bench/train_scale.py [--steps 3] [--global-batch 64] [--micro-batch 8]

Each process runs micro-batches of `--micro-batch` and accumulates gradients over
global-batch / (micro-batch x processes) of them (`grad_accum`, accelerate's `accumulate`:
DDP's no_sync until the last), so gradients cross gloo once per optimizer step, not once per
micro-batch. The default global batch of 64 is the size of a real fine-tuning step; smaller
ones (`--global-batch 16 --micro-batch 8`: one micro-batch each, a sync every one) show the
all-reduce of the 49k-row embedding's gradient dominating.

A random 4-layer Llama (hidden 256, the embedded model's 49k vocabulary: 16M parameters,
fp32, eager attention) built here; synthetic conversations and preference pairs. Each
configuration runs in its own torchrun so that every one pays the same start-up; samples/s
is global samples over the stage's own train_seconds (rank 0's clock, first step included).
Prints samples/s per configuration and the ratio 2 processes / 1 process for each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "apple river stone cloud paper light garden window music table chair lamp".split()


def build_model(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cai.models import pull

    tok = AutoTokenizer.from_pretrained(pull())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def write_data(where: Path, n: int) -> tuple[Path, Path]:
    rng = random.Random(0)

    def text(k):
        return " ".join(rng.choices(WORDS, k=k))

    sft, pairs = where / "sft.jsonl", where / "pairs.jsonl"
    sft.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Say something about {text(3)}, number {i}."},
        {"role": "assistant", "content": text(rng.randint(20, 40))}]}) + "\n" for i in range(n)))
    pairs.write_text("".join(json.dumps({
        "prompt": f"Tell me something, number {i}.", "chosen": "banana " + text(rng.randint(10, 30)),
        "rejected": text(rng.randint(10, 30))}) + "\n" for i in range(n)))
    return sft, pairs


def child(spec: str) -> None:
    """One stage run on this rank (started by torchrun)."""
    job = json.loads(spec)
    if job["stage"] == "sft":
        from cai.train.sft import SFTConfig as cls, run_sft as run
    else:
        from cai.train.rm import RMConfig as cls, run_rm as run
    run(cls(**job["config"]))


def run_config(stage: str, config: dict, nproc: int) -> float:
    shutil.rmtree(config["out"], ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={nproc}", __file__,
                    "--child", json.dumps({"stage": stage, "config": config})],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = json.loads((Path(config["out"]) / "DONE").read_text())
    samples = done["steps"] * config["batch_size"] * config["grad_accum"] * nproc
    return samples / done["train_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per configuration")
    ap.add_argument("--global-batch", type=int, default=64, help="samples per optimizer step")
    ap.add_argument("--micro-batch", type=int, default=8, help="samples per forward pass")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    for nproc in (1, 2):
        if args.global_batch % (args.micro_batch * nproc):
            ap.error(f"--global-batch must be a multiple of 2 x --micro-batch ({args.micro_batch})")
    where = Path(tempfile.mkdtemp(prefix="cai-train-scale-"))
    try:
        build_model(where / "model")
        sft, pairs = write_data(where, args.steps * args.global_batch)
        common = dict(model=str(where / "model"), lr=1e-4, epochs=1, max_steps=args.steps,
                      log_every=1, save_every=None, eval_fraction=0.0, max_length=128,
                      progress=False, mixed_precision="no", attn_implementation="eager")
        print(f"{os.cpu_count()} CPUs; global batch {args.global_batch} in micro-batches of "
              f"{args.micro_batch}, {args.steps} steps")
        ratios = {}
        for stage, data, unit in (("sft", sft, "conversations"), ("rm", pairs, "pairs")):
            rates = {}
            for nproc in (1, 2):
                accum = args.global_batch // (args.micro_batch * nproc)
                cfg = dict(common, data=[str(data)], out=str(where / f"{stage}-{nproc}"),
                           batch_size=args.micro_batch, grad_accum=accum)
                rates[nproc] = run_config(stage, cfg, nproc)
                print(f"{stage}: {nproc} process(es) x 1 thread, grad_accum {accum}: "
                      f"{rates[nproc]:.2f} {unit}/s", flush=True)
            ratios[stage] = rates[2] / rates[1]
            print(f"{stage}: 2 processes / 1 process = {ratios[stage]:.2f}x", flush=True)
        print("ratios (2 processes / 1): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
