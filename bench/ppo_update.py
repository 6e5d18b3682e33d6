"""The policy half of PPO's update (forward and backward of the response log-probs) as the
demo runs it: the embedded model with LoRA r=16, 16 rollouts in micro-batches of 4 grouped by
length, prompts of 30-90 tokens and responses of up to 48. Two ways, interleaved A B B A:

- old: the vocabulary logits of the last R+1 positions (`logits_to_keep=R+1`), the last one
  dropped by a slice (whose backward writes a zero [rows, R+1, vocab] gradient and copies);
- new: the logits of exactly the R positions that score a response token (`logits_to_keep`
  as those positions' indices), `cai.train.ppo_experience.response_logprobs` now.

    python bench/ppo_update.py [--repeats 4]

Prints seconds over the 16 rows (each micro-batch's fastest of --repeats, both ways
alternating), the ratio, and the largest log-prob difference.
The value model's passes are unchanged and not timed here.
"""

from __future__ import annotations

import argparse
import time


def old_response_logprobs(model, rows, P, temperature):
    from cai.train import losses as L

    labels = rows["input_ids"][:, P:]
    logits = model(**rows, use_cache=False,
                   logits_to_keep=labels.shape[1] + 1).logits[:, :-1].float() / temperature
    return L.logprobs_from_logits(logits, labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.models import pull
    from cai.train.ppo_experience import Batch, response_logprobs

    path = pull()
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                             lora_dropout=0.0, task_type="CAUSAL_LM")).train()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (int(n),), generator=g).tolist()
               for n in torch.randint(30, 90, (16,), generator=g)]
    resps = [torch.randint(100, 40000, (int(n),), generator=g).tolist()
             for n in torch.randint(10, 49, (16,), generator=g)]
    batch = Batch(prompts, resps, tok.pad_token_id, [tok.eos_token_id], "cpu")
    order = batch.by_length()

    def micro(i: int, new: bool) -> tuple[float, "torch.Tensor"]:
        rows, P, _ = batch.rows(order[i:i + 4])
        t = time.perf_counter()
        lp = (response_logprobs(model, rows, P, 0.7)[0] if new
              else old_response_logprobs(model, rows, P, 0.7))
        lp.sum().backward()
        s = time.perf_counter() - t
        model.zero_grad()
        return s, lp.detach()

    micro(0, False), micro(0, True)  # warm-up: first calls allocate and load kernels
    # the machine is shared: each micro-batch both ways, alternating, `repeats` times; the
    # fastest of each is the least disturbed
    best: dict[tuple[int, bool], float] = {}
    diff = 0.0
    for r in range(args.repeats):
        for i in range(0, 16, 4):
            got = {}
            for new in ((False, True) if r % 2 == 0 else (True, False)):
                s, got[new] = micro(i, new)
                best[i, new] = min(best.get((i, new), s), s)
            diff = max(diff, (got[True] - got[False]).abs().max().item())
    old = sum(v for (_, new), v in best.items() if not new)
    new = sum(v for (_, new), v in best.items() if new)
    print(f"policy log-probs forward+backward over 16 rows (fastest of {args.repeats} per "
          f"micro-batch): old {old:.2f} s, new {new:.2f} s: {old / new:.2f}x; "
          f"largest log-prob difference {diff:.1e}")


if __name__ == "__main__":
    main()
