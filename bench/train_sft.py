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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import (add_precision_flag, resolve_precision, run_trl_script,  # noqa: E402
                          synth_pairs, trl_python, write_jsonl)

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
    weight_decay=0.0, gradient_checkpointing=False, bf16=hp["mixed_precision"] == "bf16", use_cpu=True, logging_steps=10,
    save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
    completion_only_loss=True, packing=False, dataloader_num_workers=0, optim="adamw_torch_fused")
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
t = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - t
trainer.save_model(out)
tok.save_pretrained(out)
print("TRL_RESULT " + json.dumps({"seconds": seconds, "rows": len(trainer.train_dataset)}))
"""


def heldout_loss(model_dir: str, convs: list[list[dict]], max_length: int) -> float:
    """Mean answer-token NLL on held-out conversations, one function for both models (ours'
    assistant mask from the chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.train.sft import collate_sft, encode_conversation

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    items = []
    for c in convs:
        ids, labels = encode_conversation(tok, c)
        items.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    collate = collate_sft(tok.pad_token_id)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), 8):
            b = collate(items[i:i + 8])
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            labels = b["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels,
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels != -100).sum())
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--out", default="/tmp/cai-bench-train-sft")
    ap.add_argument("--venv", default="/tmp/cai-trl-venv")
    add_precision_flag(ap)
    a = ap.parse_args()
    HP["mixed_precision"] = resolve_precision(a.mixed_precision)
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

    import shutil

    for d in ("ours", "trl"):  # a finished run would be a no-op, and time nothing
        shutil.rmtree(out / d, ignore_errors=True)
    t = time.perf_counter()
    ours = run_sft(SFTConfig(model=model_dir, data=[str(ours_data)], out=str(out / "ours"),
                             save_every=None, log_every=10, lr=HP["lr"], epochs=HP["epochs"],
                             batch_size=HP["batch_size"], max_length=HP["max_length"],
                             seed=HP["seed"], max_grad_norm=HP["max_grad_norm"], progress=False,
                             mixed_precision=HP["mixed_precision"]))
    ours_wall = time.perf_counter() - t
    trl, trl_wall = run_trl_script(py, TRL_SCRIPT, model_dir, str(trl_data), str(out / "trl"),
                                   json.dumps(HP))
    ratio = trl["seconds"] / ours["train_seconds"]
    held = [r["prompt"] + r["chosen"] for r in synth_pairs(["red_team_eval.jsonl",
                                                             "helpful_eval.jsonl"], seed=1)]
    losses = {name: heldout_loss(d, held, HP["max_length"])
              for name, d in (("base", model_dir), ("ours", str(out / "ours")),
                              ("trl", str(out / "trl")))}
    print(f"data: {len(rows)} single-turn conversations (synthesized answers to "
          f"pipelines/prompts/*_train.jsonl prompts; TRL kept {trl['rows']})")
    print(f"hyperparameters: {HP}")
    print(f"training time   ours {ours['train_seconds']:.1f} s   TRL {trl['seconds']:.1f} s   "
          f"(wall incl. loading: ours {ours_wall:.1f} s, TRL {trl_wall:.1f} s)")
    print(f"ours: {ours['tokens_per_second']:,.0f} tokens/s (prompt + answer tokens)")
    print(f"throughput ratio ours/TRL: {ratio:.2f}  (target >= 1.0)")
    print(f"held-out answer loss on {len(held)} eval-prompt conversations: base "
          f"{losses['base']:.3f}   ours {losses['ours']:.3f}   TRL {losses['trl']:.3f}")
    (out / "result.json").write_text(json.dumps({"ratio": ratio, "ours": ours, "trl": trl,
                                                 "heldout_loss": losses, "hp": HP},
                                                indent=2, default=str))


if __name__ == "__main__":
    main()
