"""Reward-model text and numbers, shared by training, `cai eval rm` and `cai score`.

- `format_for_reward`: THE way a (prompt, response) becomes reward-model input: the model's
  own chat template over prompt + one assistant turn. Train, eval and score all call it.
- `encode_for_reward`: its token ids, with over-long sequences kept at their end (the
  response's end, where the reward is read) or reported for dropping.
- `score`: rewards of many (prompt, response) items in length-sorted, right-padded batches.
  The sequence-classification head reads the score at the last token that is not the pad
  id, which for right padding is the sequence's own last token.
- `pair_metrics`: TRL's names (accuracy, margin, rewards/chosen, rewards/rejected) plus
  ECE and the "prefer the longer answer" baseline.

ECE here is the calibration of the model's pairwise confidence. For each pair with a
preferred side (p != 0.5) the model predicts the side with the higher reward, with
confidence σ(|Δ|) in [0.5, 1]; the chance that prediction is right is p (or 1 - p when it
predicts rejected), which is 1 or 0 for hard labels. Pairs are put in 10 equal-width
confidence bins over [0.5, 1]; ECE = Σ_b (n_b / n) · |mean confidence_b − mean correctness_b|.
0 is perfect calibration; a model that is always sure and right half the time scores ~0.5.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

Messages = list[dict[str, str]]


def format_for_reward(tokenizer, prompt_messages: Messages, response_text: str) -> str:
    """The text the reward model reads for `response_text` answering `prompt_messages`."""
    conversation = [{"role": m["role"], "content": m["content"]} for m in prompt_messages]
    conversation.append({"role": "assistant", "content": response_text})
    return tokenizer.apply_chat_template(conversation, tokenize=False)


def encode_for_reward(tokenizer, prompt_messages: Messages, response_text: str,
                      max_length: int) -> tuple[list[int], bool]:
    """(token ids, whether the text was longer than max_length). Over-long texts keep their
    last max_length tokens: the end of the response, and of the prompt what still fits."""
    ids = tokenizer(format_for_reward(tokenizer, prompt_messages, response_text),
                    add_special_tokens=False)["input_ids"]
    if len(ids) > max_length:
        return ids[-max_length:], True
    return ids, False


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) tensors, right-padded to the longest sequence."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def score_ids(model, sequences: Sequence[Sequence[int]], pad_id: int, *, batch_size: int = 16,
              device=None) -> list[float]:
    """Rewards of tokenised sequences (any order; batched by length to waste little padding)."""
    import torch

    device = device or next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = pad_right([sequences[i] for i in idx], pad_id)
            rewards = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                            use_cache=False).logits
            for i, r in zip(idx, rewards[:, 0].float().tolist()):
                out[i] = r
    return out


def score(model, tokenizer, items: Sequence[tuple[Messages, str]], *, max_length: int,
          batch_size: int = 16) -> list[float]:
    """Rewards of (prompt messages, response text) items."""
    seqs = [encode_for_reward(tokenizer, p, r, max_length)[0] for p, r in items]
    return score_ids(model, seqs, tokenizer.pad_token_id, batch_size=batch_size)


# --------------------------------------------------------------------------- metrics


def _hit(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion (ties counted half are fine)."""
    if n == 0:
        return None
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability_bins(deltas: Sequence[float], p_chosen: Sequence[float],
                     bins: int = 10) -> list[dict[str, float]]:
    """The reliability diagram: for each non-empty confidence bin over [0.5, 1], its mean
    confidence, mean correctness and count. Pairs with p = 0.5 have no preferred side and are
    skipped."""
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, sum confidence, sum correctness
    for d, p in zip(deltas, p_chosen):
        if p == 0.5:
            continue
        conf = 1.0 / (1.0 + math.exp(-abs(d)))
        correct = p if d >= 0 else 1.0 - p
        b = min(int((conf - 0.5) / 0.5 * bins), bins - 1)
        totals[b][0] += 1
        totals[b][1] += conf
        totals[b][2] += correct
    return [{"confidence": sc / c, "accuracy": sk / c, "count": c}
            for c, sc, sk in totals if c]


def expected_calibration_error(deltas: Sequence[float], p_chosen: Sequence[float],
                               bins: int = 10) -> float | None:
    """See the module docstring; None when no pair has a preferred side."""
    rows = reliability_bins(deltas, p_chosen, bins)
    n = sum(r["count"] for r in rows)
    if not n:
        return None
    return sum(r["count"] / n * abs(r["confidence"] - r["accuracy"]) for r in rows)


def pair_metrics(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float],
                 p_chosen: Sequence[float], chosen_lengths: Sequence[int],
                 rejected_lengths: Sequence[int]) -> dict[str, Any]:
    """Accuracy (ties half) against the label's preferred side, on pairs with p != 0.5;
    margin = mean(r_chosen - r_rejected) over all pairs; the length baseline is the accuracy
    of "prefer the longer answer" (characters) on the same pairs as accuracy."""
    deltas = [c - r for c, r in zip(chosen_rewards, rejected_rewards)]
    hits, longer = [], []
    for d, p, lc, lr in zip(deltas, p_chosen, chosen_lengths, rejected_lengths):
        if p == 0.5:
            continue
        hits.append(_hit(d, 0.0) if p > 0.5 else _hit(0.0, d))
        longer.append(_hit(lc, lr) if p > 0.5 else _hit(lr, lc))
    n = len(hits)
    acc = sum(hits) / n if n else None
    ci = wilson_interval(sum(hits), n)
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {
        "n": n,
        "pairs": len(deltas),
        "accuracy": acc,
        "accuracy_ci95": list(ci) if ci else None,
        "margin": mean(deltas),
        "rewards/chosen": mean(list(chosen_rewards)),
        "rewards/rejected": mean(list(rejected_rewards)),
        "ece": expected_calibration_error(deltas, p_chosen),
        "bins": reliability_bins(deltas, p_chosen),
        "length_baseline": sum(longer) / n if n else None,
    }
