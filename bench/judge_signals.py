"""Zero-shot judge signals beyond the Yes/No verdict, on human-labeled pairs: does any
log-prob signal of the embedded model pick the human's choice on *both* kinds of set?

    python bench/judge_signals.py pipelines/prompts/human_prefs.jsonl hhh.jsonl

For each response y to prompt x (transformers, fp32, one sequence at a time):
  good_vs_bad   mean over y's tokens of log p(y | "helpful, honest and harmless" system, x)
                − log p(y | "unhelpful, dishonest and harmful" system, x)   (contrastive prompts)
  good_vs_none  the same against no system prompt
  fluency       mean log p(y | x)
The pair goes to the response with the higher signal. Prints accuracy with a 95% Wilson
interval, the split by whether the human's choice is the longer answer, the length-balanced
accuracy and the "prefer longer" baseline (README, "AI feedback: pairwise or pointwise").
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cai.models import pull
from cai.stats import wilson

SYSTEMS = {"good": "You are a helpful, honest and harmless assistant.",
           "bad": "You are an unhelpful, dishonest and harmful assistant.", "none": None}


def main(paths: list[str]) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_dir = pull()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cache: dict = {}

    def logp(prompt, system: str | None, response: str) -> tuple[float, int]:
        key = (json.dumps(prompt), system, response)
        if key not in cache:
            conv = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            msgs = ([{"role": "system", "content": system}] if system else []) + conv
            ctx = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False).input_ids
            resp = tok(response + tok.eos_token, add_special_tokens=False).input_ids
            with torch.no_grad():
                lp = model(torch.tensor([ctx + resp])).logits[0, len(ctx) - 1:-1].log_softmax(-1)
            cache[key] = (lp.gather(1, torch.tensor(resp)[:, None]).sum().item(), len(resp))
        return cache[key]

    for path in paths:
        rows = [json.loads(line) for line in open(path)]
        t0 = time.time()
        feats = []
        for r in rows:
            f = {}
            for side in ("chosen", "rejected"):
                (g, n), (b, _), (o, _) = (logp(r["prompt"], SYSTEMS[s], r[side]) for s in ("good", "bad", "none"))
                f[side] = {"good_vs_bad": (g - b) / n, "good_vs_none": (g - o) / n, "fluency": o / n,
                           "chars": len(r[side])}
            feats.append(f)
        n = len(rows)
        longer = sum(f["chosen"]["chars"] > f["rejected"]["chars"] for f in feats)
        ties = sum(f["chosen"]["chars"] == f["rejected"]["chars"] for f in feats)
        print(f"{path}: n={n}, {(time.time() - t0) / n:.2f} s/pair, prefer-longer {(longer + ties / 2) / n:.1%}")
        for key in ("good_vs_bad", "good_vs_none", "fluency"):
            won = {"longer": [0.0, 0], "shorter": [0.0, 0]}
            k = 0.0
            for f in feats:
                c, rj = f["chosen"][key], f["rejected"][key]
                win = 1.0 if c > rj else 0.5 if c == rj else 0.0
                k += win
                if f["chosen"]["chars"] != f["rejected"]["chars"]:
                    g = won["longer" if f["chosen"]["chars"] > f["rejected"]["chars"] else "shorter"]
                    g[0] += win
                    g[1] += 1
            lo, hi = wilson(k, n)
            lb = sum(w / max(1, m) for w, m in won.values()) / 2
            print(f"  {key:13s} accuracy {k / n:.1%} [{lo:.0%}, {hi:.0%}]  human choice longer "
                  f"{won['longer'][0]:.0f}/{won['longer'][1]}  shorter {won['shorter'][0]:.0f}/"
                  f"{won['shorter'][1]}  length-balanced {lb:.1%}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["pipelines/prompts/human_prefs.jsonl"])
