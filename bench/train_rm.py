"""Reward model: ours (cai train rm) vs TRL's RewardTrainer (trl==1.16.0, in a throwaway
venv), on the embedded model, the same data, hyperparameters, epochs, max length and batch
size. Prints the throughput ratio ours/TRL (training time on the same tokens) and both
models' held-out accuracy, scored by the same function (cai.train.reward.score).

    flock /tmp/cai-heavy.lock .venv/bin/python bench/train_rm.py [--pairs 320] [--out DIR] \
        [--order ours-first|trl-first] [--no-share-prompt]

Ours runs each pair's prompt once (RMConfig.share_prompt, the default; the same loss from
fewer tokens). --no-share-prompt runs chosen and rejected as separate sequences, as TRL does.

The machine's speed drifts by 10-30% over minutes here: run both orders and report both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import (add_precision_flag, human_pairs, resolve_precision,  # noqa: E402
                          run_trl_script, synth_pairs, trl_python, write_jsonl)

HP = dict(lr=2e-5, epochs=1, batch_size=8, max_length=256, seed=0, max_grad_norm=1.0)

TRL_SCRIPT = r"""
import json, sys, time
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer
model_dir, data, out, hp = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
model.config.pad_token_id = tok.pad_token_id
ds = load_dataset("json", data_files=data, split="train")
args = RewardConfig(output_dir=out, learning_rate=hp["lr"], num_train_epochs=hp["epochs"],
    per_device_train_batch_size=hp["batch_size"], max_length=hp["max_length"], seed=hp["seed"],
    max_grad_norm=hp["max_grad_norm"], lr_scheduler_type="linear", warmup_steps=0,
    weight_decay=0.0, gradient_checkpointing=False, bf16=hp["mixed_precision"] == "bf16", use_cpu=True, logging_steps=10,
    save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
    dataloader_num_workers=0, optim="adamw_torch_fused")
trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
t = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - t
trainer.save_model(out)
tok.save_pretrained(out)
print("TRL_RESULT " + json.dumps({"seconds": seconds, "pairs": len(trainer.train_dataset)}))
"""


def heldout_accuracy(model_dir: str, pairs: list[dict], max_length: int) -> dict:
    from cai.eval.rm import load_scoring_model
    from cai.stats import pair_metrics
    from cai.train.reward import score

    model, tok = load_scoring_model(model_dir)
    items = []
    for p in pairs:
        items += [(p["prompt"], p["chosen"][0]["content"]), (p["prompt"], p["rejected"][0]["content"])]
    r = score(model, tok, items, max_length=max_length)
    return pair_metrics(r[0::2], r[1::2], [1.0] * len(pairs),
                        [len(p["chosen"][0]["content"]) for p in pairs],
                        [len(p["rejected"][0]["content"]) for p in pairs])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=320)
    ap.add_argument("--out", default="/tmp/cai-bench-train-rm")
    ap.add_argument("--venv", default="/tmp/cai-trl-venv")
    ap.add_argument("--order", choices=["ours-first", "trl-first"], default="ours-first")
    ap.add_argument("--no-share-prompt", dest="share_prompt", action="store_false")
    add_precision_flag(ap)
    a = ap.parse_args()
    HP["mixed_precision"] = resolve_precision(a.mixed_precision)
    from cai.models import pull
    from cai.train.rm import RMConfig, run_rm

    out = Path(a.out)
    model_dir = str(pull())
    train = synth_pairs(["red_team_train.jsonl", "helpful_train.jsonl"], seed=0)[: a.pairs]
    import random

    random.Random(1).shuffle(train)
    heldout = synth_pairs(["red_team_eval.jsonl", "helpful_eval.jsonl"], seed=1)
    human = human_pairs()
    data = write_jsonl(out / "train.jsonl", train)
    py = trl_python(Path(a.venv))

    import shutil

    for d in ("ours", "trl"):  # a finished run would be a no-op, and time nothing
        shutil.rmtree(out / d, ignore_errors=True)

    def run_ours():
        t = time.perf_counter()
        summary = run_rm(RMConfig(model=model_dir, data=[str(data)], out=str(out / "ours"),
                                  eval_fraction=0.0, overlong="drop", save_every=None, log_every=10,
                                  lr=HP["lr"], epochs=HP["epochs"], batch_size=HP["batch_size"],
                                  max_length=HP["max_length"], seed=HP["seed"],
                                  max_grad_norm=HP["max_grad_norm"], progress=False,
                                  share_prompt=a.share_prompt,
                                  mixed_precision=HP["mixed_precision"]))
        return summary, time.perf_counter() - t

    def run_trl():
        return run_trl_script(py, TRL_SCRIPT, model_dir, str(data), str(out / "trl"), json.dumps(HP))

    # the machine's speed drifts over minutes: run twice with the order swapped (--order) and
    # compare the runs, rather than trust one order
    if a.order == "trl-first":
        trl, trl_wall = run_trl()
        ours, ours_wall = run_ours()
    else:
        ours, ours_wall = run_ours()
        trl, trl_wall = run_trl()

    acc = {name: {"synth": heldout_accuracy(d, heldout, HP["max_length"]),
                  "human": heldout_accuracy(d, human, HP["max_length"])}
           for name, d in (("ours", str(out / "ours")), ("trl", str(out / "trl")))}
    ratio = trl["seconds"] / ours["train_seconds"]
    print(f"data: {len(train)} synthesized training pairs (TRL kept {trl['pairs']}); held out "
          f"{len(heldout)} synthesized pairs on eval prompts + {len(human)} human_prefs pairs")
    print(f"hyperparameters: {HP}; order: {a.order}; ours share_prompt={a.share_prompt}")
    print(f"training time   ours {ours['train_seconds']:.1f} s   TRL {trl['seconds']:.1f} s   "
          f"(wall incl. loading: ours {ours_wall:.1f} s, TRL {trl_wall:.1f} s)")
    print(f"throughput ratio ours/TRL: {ratio:.2f}  (target >= 1.0)")
    for split in ("synth", "human"):
        o, t_ = acc["ours"][split]["accuracy"], acc["trl"][split]["accuracy"]
        print(f"held-out accuracy [{split}]  ours {100 * o:.1f}%   TRL {100 * t_:.1f}%   "
              f"diff {100 * (o - t_):+.1f} points")
    (out / "result.json").write_text(json.dumps({"ratio": ratio, "ours": ours, "trl": trl,
                                                 "accuracy": acc, "hp": HP}, indent=2, default=str))


if __name__ == "__main__":
    main()
