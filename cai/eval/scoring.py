"""Numbers computed with model weights: reward-model scores and the policy's KL to its reference.

- `reward_scores(rm_dir, prompts, responses)`: one scalar per (prompt, response) from a
  `cai train rm` directory (AutoModelForSequenceClassification, num_labels=1), through the
  reward stage's own loader and scorer (`cai.eval.rm.load_scoring_model`,
  `cai.train.reward.score`), so evaluation reads rewards exactly as training, `cai score` and
  PPO do.
- `kl_to_reference`: per sample, sum over response tokens of log pi(y_t) - log pi_ref(y_t),
  on the policy's own samples. Averaged over prompts this is an unbiased Monte-Carlo
  estimate of KL(pi || pi_ref) only when y ~ pi, i.e. sampled at temperature 1 with no
  top-p/top-k truncation; greedy or truncated samples give a biased number.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

Messages = list[dict[str, str]]


def reward_scores(rm_dir: str, prompts: Sequence[Messages | str], responses: Sequence[str], *,
                  max_length: int = 2048, batch_size: int = 16,
                  on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Reward of each response to its prompt (a message list, or text = one user turn);
    `on_batch(n)` after each batch of n responses (a progress bar)."""
    from cai.eval.rm import load_scoring_model
    from cai.train.reward import score

    if len(prompts) != len(responses):
        raise ValueError("reward_scores: prompts and responses differ in length")
    model, tokenizer = load_scoring_model(rm_dir)
    items = [([{"role": "user", "content": p}] if isinstance(p, str) else p, r)
             for p, r in zip(prompts, responses)]
    return score(model, tokenizer, items, max_length=max_length, batch_size=batch_size,
                 on_batch=on_batch)


def load_causal_lm(path: str, device: str | None = None):
    """(model, tokenizer) in float32 for exact log-probs, loaded by the training core's
    loader (`cai.train.modeling.load_causal_lm`), as SFT does."""
    import torch
    from transformers import AutoTokenizer

    from cai.models import resolve_model
    from cai.train.modeling import load_causal_lm as load_training_lm

    resolved = resolve_model(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    return load_training_lm(resolved, tokenizer).to(device).eval(), tokenizer


def sequence_logprobs(lm: Any, prompt_ids: Sequence[Sequence[int]],
                      response_ids: Sequence[Sequence[int]], *, batch_size: int = 8,
                      pad_id: int = 0, on_batch: Callable[[int], None] | None = None
                      ) -> list[float]:
    """Sum of log p(response token | prompt, earlier response tokens) per sequence, with
    prompt and response given as token ids (so the scored tokens are exactly the sampled
    ones). Sequences are right-padded; a response of no tokens scores 0."""
    import torch

    from cai.train.losses import logprobs_from_logits, masked_sum

    device = next(lm.parameters()).device
    out = [0.0] * len(prompt_ids)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = [i for i in order[start:start + batch_size] if response_ids[i]]
            if idx:
                seqs = [list(prompt_ids[i]) + list(response_ids[i]) for i in idx]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
                attn = torch.zeros((len(seqs), width), dtype=torch.long)
                scored = torch.zeros((len(seqs), width - 1), dtype=torch.long)
                for row, (i, s) in enumerate(zip(idx, seqs)):
                    ids[row, :len(s)] = torch.tensor(s)
                    attn[row, :len(s)] = 1
                    # logits at t predict token t+1: response tokens sit at len(prompt)..len(s)-1
                    scored[row, len(prompt_ids[i]) - 1:len(s) - 1] = 1
                # no row scores a position before its prompt's last token: the vocabulary
                # projection and log-softmax (most of the memory) skip the shared prefix
                start = min(len(prompt_ids[i]) for i in idx) - 1
                ids, attn, scored = ids.to(device), attn.to(device), scored[:, start:].to(device)
                logits = lm(input_ids=ids, attention_mask=attn, use_cache=False,
                            logits_to_keep=width - start).logits[:, :-1]
                per_token = logprobs_from_logits(logits, ids[:, start + 1:])
                for row, i in enumerate(idx):
                    out[i] = float(masked_sum(per_token[row], scored[row]))
            if on_batch:
                on_batch(len(order[start:start + batch_size]))
    return out


def kl_to_reference(policy_lm: Any, reference_lm: Any, prompt_ids: Sequence[Sequence[int]],
                    response_ids: Sequence[Sequence[int]], *, batch_size: int = 8,
                    pad_id: int = 0, on_batch: Callable[[int], None] | None = None
                    ) -> list[float]:
    """Per sample: sum_t log pi(y_t) - log pi_ref(y_t) (the k1 estimator summed over the
    response). With the same model on both sides every term is exactly 0."""
    lp = sequence_logprobs(policy_lm, prompt_ids, response_ids, batch_size=batch_size,
                           pad_id=pad_id, on_batch=on_batch)
    lr = sequence_logprobs(reference_lm, prompt_ids, response_ids, batch_size=batch_size,
                           pad_id=pad_id, on_batch=on_batch)
    return [a - b for a, b in zip(lp, lr)]
