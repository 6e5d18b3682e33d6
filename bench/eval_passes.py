"""`cai eval policy`'s transformers passes over the answers: the KL log-probs (policy and
reference) and the reward model, as the demo runs them (embedded model, 48 answers, batches
of 8), measured two ways each, interleaved A B B A:

1. KL log-probs: every position's vocabulary logits (the old path) against only those from
   the shortest prompt's last token on (`cai.eval.scoring.sequence_logprobs` now); the
   figures must agree (printed: the largest difference, nats per sequence);
2. the reward-model pass and the KL pass one after the other against both at once in two
   threads (does overlapping them pay on this machine's cores?).

    python bench/eval_passes.py [--answers 48] [--tokens 96]

The answers are real text (other eval prompts' words) cut to --tokens tokens; the reward
model is the embedded model under a fresh seeded scalar head (bench/ppo.py's quick RM).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo import build_quick_rm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "pipelines/prompts/red_team_eval.jsonl", ROOT / "pipelines/prompts/helpful_eval.jsonl"]


def full_logit_logprobs(lm, prompt_ids, response_ids, batch_size, pad_id):
    """The old path: logits at every position, then the response's."""
    import torch

    from cai.train.losses import logprobs_from_logits, masked_sum

    out = [0.0] * len(prompt_ids)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seqs = [list(prompt_ids[i]) + list(response_ids[i]) for i in idx]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            scored = torch.zeros((len(seqs), width - 1), dtype=torch.long)
            for row, (i, s) in enumerate(zip(idx, seqs)):
                ids[row, :len(s)] = torch.tensor(s)
                attn[row, :len(s)] = 1
                scored[row, len(prompt_ids[i]) - 1:len(s) - 1] = 1
            logits = lm(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
            per_token = logprobs_from_logits(logits, ids[:, 1:])
            for row, i in enumerate(idx):
                out[i] = float(masked_sum(per_token[row], scored[row]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=int, default=48)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import torch

    from cai.backends.text import encode, render_chat
    from cai.eval.scoring import load_causal_lm, reward_scores, sequence_logprobs
    from cai.models import pull

    rows = [json.loads(x) for f in FILES for x in f.read_text().splitlines() if x.strip()]
    prompts = [r["prompt"] for r in rows][:args.answers]
    lm, tok = load_causal_lm(str(pull()), device="cpu")
    words = " ".join(r["prompt"] for r in rows).split()
    answers = []
    for i in range(len(prompts)):
        text = " ".join(words[(i * 37) % len(words):] + words)
        answers.append(tok.decode(tok(text)["input_ids"][:args.tokens]))
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    p_ids = [encode(tok, render_chat(tok, m)) for m in msgs]
    r_ids = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    rm_dir = build_quick_rm(Path("/tmp/cai-bench-quick-rm"))
    bs, pad = args.batch_size, tok.pad_token_id
    print(f"{len(prompts)} answers, prompts {min(map(len, p_ids))}-{max(map(len, p_ids))} tokens, "
          f"answers {min(map(len, r_ids))}-{max(map(len, r_ids))} tokens, "
          f"{torch.get_num_threads()} torch threads")

    def kl_pass(fn):  # policy and reference: the same weights twice, as the work is
        return [fn(lm, p_ids, r_ids, batch_size=bs, pad_id=pad) for _ in range(2)]

    def rm_pass():
        return reward_scores(str(rm_dir), msgs * 2, answers * 2, batch_size=bs)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    secs: dict[str, list[float]] = {"old": [], "new": [], "sequential": [], "overlapped": []}
    diff = 0.0
    for name in ("old", "new", "new", "old"):
        s, out = timed(lambda: kl_pass(full_logit_logprobs if name == "old" else sequence_logprobs))
        secs[name].append(s)
        if name == "old":
            old_out = out
        else:
            new_out = out
    diff = max(abs(a - b) for a, b in zip(old_out[0], new_out[0]))
    print(f"KL log-probs: all-position logits {sum(secs['old']) / 2:.1f} s, from the prompt's "
          f"end {sum(secs['new']) / 2:.1f} s: {sum(secs['old']) / sum(secs['new']):.2f}x; "
          f"largest difference {diff:.2e} nats per sequence")

    def sequential():
        rm_pass(), kl_pass(sequence_logprobs)

    def overlapped():
        t = threading.Thread(target=rm_pass)
        t.start()
        kl_pass(sequence_logprobs)
        t.join()

    for name in ("sequential", "overlapped", "overlapped", "sequential"):
        secs[name].append(timed(sequential if name == "sequential" else overlapped)[0])
    print(f"reward model + KL: one after the other {sum(secs['sequential']) / 2:.1f} s, "
          f"overlapped in two threads {sum(secs['overlapped']) / 2:.1f} s: "
          f"{sum(secs['sequential']) / sum(secs['overlapped']):.2f}x")


if __name__ == "__main__":
    main()
