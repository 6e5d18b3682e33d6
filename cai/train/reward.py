"""Reward-model text and numbers, shared by training, `cai eval rm` and `cai score`.

- `format_for_reward`: THE way a (prompt, response) becomes reward-model input: the model's
  own chat template over prompt + one assistant turn. Train, eval and score all call it.
- `encode_for_reward`: its token ids, with over-long sequences kept at their end (the
  response's end, where the reward is read) or reported for dropping.
- `score`: rewards of many (prompt, response) items in length-sorted, right-padded batches.
  The sequence-classification head reads the score at the last token that is not the pad
  id, which for right padding is the sequence's own last token.
- `pack_pairs` + `token_rewards`: a batch of pairs with each pair's common prefix (the
  prompt) run once, for training; see `pack_pairs`.

The pair metrics (accuracy, margin, ECE, calibration bins) are in `cai.stats`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

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
              device=None, on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Rewards of tokenised sequences (any order; batched by length to waste little padding).
    `on_batch(n)` is called after each batch with its number of sequences (a progress bar)."""
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
            if on_batch:
                on_batch(len(idx))
    return out


def score(model, tokenizer, items: Sequence[tuple[Messages, str]], *, max_length: int,
          batch_size: int = 16, on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Rewards of (prompt messages, response text) items (`on_batch` as in `score_ids`)."""
    seqs = [encode_for_reward(tokenizer, p, r, max_length)[0] for p, r in items]
    return score_ids(model, seqs, tokenizer.pad_token_id, batch_size=batch_size,
                     on_batch=on_batch)


# --------------------------------------------------------------------------- shared prompt


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token sequences, leaving each at least its last
    token (where its reward is read)."""
    n, limit = 0, min(len(a), len(b)) - 1
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def pack_pairs(chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
               pad_id: int) -> dict[str, Any]:
    """One row per pair: [common prefix, chosen rest, rejected rest], right-padded.

    Chosen and rejected share their prompt, and in a causal LM the prompt's hidden states do
    not depend on what follows it, so the prompt is run once (prefix sharing, as in Wang et
    al. 2024 for DPO). A 4D boolean mask (True = may attend) lets the rejected tokens see the
    prefix and themselves but not the chosen tokens, and their position ids restart where
    the prefix ends. Each token thus sees exactly what it sees in its own sequence, so the
    rewards and their gradients are those of the two separate sequences, from fewer tokens.
    Padding attends to itself only (no empty softmax rows).

    Returns input_ids, position_ids, attention_mask (B, 1, T, T), chosen_index and
    rejected_index (the column of each side's last token) and tokens (the pairs' tokens
    as separate sequences, so tokens/s stays comparable with share_prompt off)."""
    import torch

    rows = []
    for c, r in zip(chosen, rejected):
        n = shared_prefix_length(c, r)
        rows.append((list(c) + list(r[n:]), n, len(c), len(r) - n))
    width = max(len(ids) for ids, *_ in rows)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    mask = torch.zeros((b, 1, width, width), dtype=torch.bool)
    chosen_index = torch.empty(b, dtype=torch.long)
    rejected_index = torch.empty(b, dtype=torch.long)
    for i, (ids, n, c_len, r_rest) in enumerate(rows):
        total = c_len + r_rest
        input_ids[i, :total] = torch.tensor(ids, dtype=torch.long)
        position_ids[i, :c_len] = torch.arange(c_len)
        position_ids[i, c_len:total] = torch.arange(n, n + r_rest)
        mask[i, 0, :total, :total] = causal[:total, :total]
        mask[i, 0, c_len:total, n:c_len] = False  # rejected tokens do not see chosen ones
        idx = torch.arange(total, width)
        mask[i, 0, idx, idx] = True
        chosen_index[i], rejected_index[i] = c_len - 1, total - 1
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask,
            "chosen_index": chosen_index, "rejected_index": rejected_index,
            "tokens": sum(len(c) + len(r) for c, r in zip(chosen, rejected))}


def scalar_head(model):
    """The linear head of a sequence-classification model (`score` in Llama/Qwen/Mistral,
    `classifier` in BERT-likes), through DDP/accelerate and peft wrappers."""
    m = getattr(model, "module", model)  # DDP / accelerate wrappers
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()  # peft
    for name in ("score", "classifier"):
        head = getattr(m, name, None)
        if head is not None:
            return head
    raise ValueError(f"{type(m).__name__} has no `score` or `classifier` head")


def takes_shared_prompt(model) -> str | None:
    """None when `pack_pairs` rows can run on `model`, else why not."""
    impl = getattr(getattr(model, "module", model).config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} takes no custom 4D mask"
    try:
        scalar_head(model)
    except ValueError as e:
        return str(e)
    return None


def per_position_scores(model, input_ids, attention_mask, position_ids=None):
    """The scalar head at every position, [B, T]. The model runs through its own forward, so
    DDP/FSDP hooks run; the head's per-position output is read with a forward hook, because
    the model itself returns only the score at the last non-pad token. A 4D boolean mask
    (True = may attend) is turned into the additive form when the attention is eager."""
    import torch

    if attention_mask.dim() == 4:
        if (why := takes_shared_prompt(model)) is not None:
            raise ValueError(f"{why}; train with share_prompt=false")
        if getattr(model, "module", model).config._attn_implementation == "eager":
            # eager attention adds the mask to the scores
            dtype = next(model.parameters()).dtype
            attention_mask = torch.zeros(attention_mask.shape, dtype=dtype,
                                         device=attention_mask.device).masked_fill(
                ~attention_mask, torch.finfo(dtype).min)
    seen = []
    handle = scalar_head(model).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
              use_cache=False)
    finally:
        handle.remove()
    return seen[-1][..., 0]


def score_pairs(model, chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
                pad_id: int, *, batch_size: int = 16,
                on_batch: Callable[[int], None] | None = None) -> tuple[list[float], list[float]]:
    """Rewards of tokenised (chosen, rejected) pairs, no gradients. Each pair's common prompt
    runs once (`pack_pairs`, batch_size // 2 pairs a batch, shortest first) where the model
    takes it, else the sequences are scored one by one (`score_ids`). `on_batch(n)` is
    called after each batch with the number of sequences it scored (2 per pair)."""
    import torch

    n = len(chosen)
    if takes_shared_prompt(model) is not None:
        r = score_ids(model, list(chosen) + list(rejected), pad_id, batch_size=batch_size,
                      on_batch=on_batch)
        return r[:n], r[n:]
    device = next(model.parameters()).device
    order = sorted(range(n), key=lambda i: len(chosen[i]) + len(rejected[i]))
    out_c, out_r = [0.0] * n, [0.0] * n
    step = max(1, batch_size // 2)
    with torch.no_grad():
        for start in range(0, n, step):
            idx = order[start:start + step]
            batch = pack_pairs([chosen[i] for i in idx], [rejected[i] for i in idx], pad_id)
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            rc, rr = token_rewards(model, batch)
            for i, c, r in zip(idx, rc.float().tolist(), rr.float().tolist()):
                out_c[i], out_r[i] = c, r
            if on_batch:
                on_batch(2 * len(idx))
    return out_c, out_r


def token_rewards(model, batch: dict[str, Any]):
    """(chosen rewards, rejected rewards) of a `pack_pairs` batch."""
    import torch

    per_token = per_position_scores(model, batch["input_ids"], batch["attention_mask"],
                                    batch["position_ids"])
    rows = torch.arange(per_token.shape[0], device=per_token.device)
    return (per_token[rows, batch["chosen_index"].to(per_token.device)],
            per_token[rows, batch["rejected_index"].to(per_token.device)])
