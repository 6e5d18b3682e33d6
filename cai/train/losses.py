"""Losses and estimators for SFT, reward modelling and PPO: small pure functions over tensors.

Only torch is imported here, so each function can be checked against numbers worked out by hand
(tests/test_train_losses.py, tests/test_ppo_losses.py).
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# Shared: masked statistics, log-prob gathering, reward-model losses
# ---------------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is true (mask is 0/1 or bool, broadcastable to values)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is true; 0 where nothing is masked in
    (an empty mask contributes no gradient instead of a NaN)."""
    mask = mask.to(values.dtype)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked-in positions (all dims). `unbiased` divides by n - 1, as
    torch.var does by default."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.to(values.dtype).sum()
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over the masked-in positions; with shift_mean=False the mean is
    added back (only the scale changes), as PPO does for rewards."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position: logits [..., V], labels [...] (int) -> [...].

    Callers shift: the logits at position t score the token at t + 1."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, labels.long().unsqueeze(-1)).squeeze(-1)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    p_chosen: torch.Tensor | None = None,
    *,
    margin: torch.Tensor | float | None = None,
    center_coefficient: float = 0.0,
) -> torch.Tensor:
    """Mean Bradley-Terry loss of a batch of pairs, on soft labels.

        Δ = r_chosen - r_rejected
        loss = -(p · log σ(Δ - m) + (1 - p) · log σ(-Δ - m)) + c · (r_chosen + r_rejected)²

    p is the probability that `chosen` is the better answer (1 for a hard label, which gives
    the standard -log σ(Δ)). The margin m asks the preferred side to win by at least m, in
    whichever direction the label points (with p = 1 it is TRL's `margin`). c is TRL's
    `center_rewards_coefficient`: it pulls the pair's rewards towards a zero sum, so rewards
    stay centred and comparable across prompts."""
    delta = chosen_rewards.float() - rejected_rewards.float()
    m = 0.0 if margin is None else margin
    if isinstance(m, torch.Tensor):
        m = m.to(delta.dtype)
    loss = -torch.nn.functional.logsigmoid(delta - m)
    if p_chosen is not None:
        p = p_chosen.to(delta.dtype)
        loss = p * loss - (1.0 - p) * torch.nn.functional.logsigmoid(-delta - m)
    if center_coefficient:
        loss = loss + center_coefficient * (chosen_rewards.float() + rejected_rewards.float()) ** 2
    return loss.mean()


# ---------------------------------------------------------------------------------------------
# PPO: KL estimators, reward shaping, GAE, whitening, clipped losses, KL controller
# ---------------------------------------------------------------------------------------------
