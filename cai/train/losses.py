"""Losses and estimators for SFT, reward modelling and PPO: small pure functions over tensors.

Only torch is imported here, so each function can be checked against numbers worked out by hand
(tests/test_train_losses.py, tests/test_ppo_losses.py).
"""

from __future__ import annotations

from typing import Callable, Optional

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


# Data-parallel PPO: each rank holds a share of the batch. `reduce_sum` (a sum over the ranks,
# e.g. `lambda t: accelerator.reduce(t, "sum")`; None for one process) makes a statistic global,
# so N ranks whiten, normalise and average exactly as one process with the whole batch.
ReduceSum = Optional[Callable[[torch.Tensor], torch.Tensor]]


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor,
                       reduce_sum: ReduceSum = None) -> torch.Tensor:
    """masked_mean over the masked-in positions of every rank's share (one all-reduce)."""
    if reduce_sum is None:
        return masked_mean(values, mask)
    mask = mask.to(values.dtype)
    both = reduce_sum(torch.stack([masked_sum(values, mask), mask.sum()]))
    return both[0] / both[1].clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               reduce_sum: ReduceSum = None) -> torch.Tensor:
    """Variance over the masked-in positions (all dims; all ranks' with `reduce_sum`).
    `unbiased` divides by n - 1, as torch.var does by default."""
    mean = global_masked_mean(values, mask, reduce_sum)
    var = global_masked_mean((values - mean) ** 2, mask, reduce_sum)
    if unbiased:
        n = mask.to(values.dtype).sum()
        n = reduce_sum(n) if reduce_sum is not None else n
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def rank_share_of_mean(values: torch.Tensor, mask: torch.Tensor,
                       reduce_sum: ReduceSum = None) -> torch.Tensor:
    """This rank's sum over the global count, times the number of ranks: the ranks' average of
    it (what DDP does to gradients) is the mean over all ranks' masked-in positions."""
    if reduce_sum is None:
        return masked_mean(values, mask)
    mask = mask.to(values.dtype)
    count_and_ranks = reduce_sum(torch.stack([mask.sum().detach(), torch.ones_like(mask.sum())]))
    return masked_sum(values, mask) / count_and_ranks[0].clamp(min=1.0) * count_and_ranks[1]


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8, reduce_sum: ReduceSum = None) -> torch.Tensor:
    """(values - mean) / std over the masked-in positions (of all ranks, with `reduce_sum`);
    with shift_mean=False the mean is added back (only the scale changes), as PPO does for
    rewards."""
    mean = global_masked_mean(values, mask, reduce_sum)
    var = masked_var(values, mask, reduce_sum=reduce_sum)
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
#
# Shapes: B sequences x T response tokens, response tensors right-padded; `mask` is 1 on the
# tokens the policy generated up to and including its first EOS, 0 after it and on padding.


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (what follows an EOS is
    padding or text the policy would never have been asked to write)."""
    is_eos = response_ids == eos_token_id
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS strictly before t
    return (eos_before == 0).long()


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 = log π(a) - log π_ref(a): unbiased for KL(π‖π_ref), can be negative."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = (r - 1) - log r with r = π_ref(a)/π(a): unbiased and never negative."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    if estimator == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if estimator == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(f"unknown KL estimator {estimator!r} (k1 or k3)")


def normalize_scores(scores: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Reward-model scores in units of the RM's own spread on its training pairs, so one β
    and one set of clip ranges fit any reward model."""
    return (scores - mean) / std


def penalize_missing_eos(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract `penalty` from the score of each response that ran out of tokens before its
    EOS (the RM would otherwise score an unfinished text as if it were an answer)."""
    return torch.where(has_eos.bool(), scores, scores - penalty)


def whiten_scores(scores: torch.Tensor, reduce_sum: ReduceSum = None) -> torch.Tensor:
    """Optional batch whitening of the sequence-level scores (mean 0, std 1 in the batch)."""
    return masked_whiten(scores, torch.ones_like(scores), reduce_sum=reduce_sum)


def shape_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards: -β·KL on every response token, plus the sequence score on the
    last one (the token the reward model read last). Zero on masked positions."""
    rewards = -beta * kl * mask
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

        δ_t = r_t + γ·V_{t+1}·m_{t+1} - V_t,    A_t = δ_t + γλ·m_{t+1}·A_{t+1}

    The episode ends at the last unmasked token: V and A beyond it count as 0.
    Returns (advantages, returns = advantages + values), both zero where masked.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, 0])
        next_value = values[:, t + 1] * next_mask if t + 1 < T else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_mask * next_adv
        advantages[:, t] = next_adv
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    reduce_sum: ReduceSum = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean over tokens of max(-A·ρ, -A·clip(ρ, 1±ε)), ρ = π/π_old.
    With `reduce_sum` the loss is this rank's share of the mean over all ranks' tokens
    (`rank_share_of_mean`).

    Returns (loss, clip fraction = share of tokens where the clipped term won,
    approx-KL = mean ½(log ρ)², a cheap KL(π_old‖π) for monitoring).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = rank_share_of_mean(torch.maximum(unclipped, clipped), mask, reduce_sum)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, clip_frac, approx_kl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    reduce_sum: ReduceSum = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ½·mean max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±ε).
    With `reduce_sum`, this rank's share of the mean over all ranks' tokens.

    Returns (loss, share of tokens where the clipped error was the larger)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * rank_share_of_mean(torch.maximum(err, err_clipped), mask, reduce_sum)
    with torch.no_grad():
        clip_frac = masked_mean((err_clipped > err).to(values.dtype), mask)
    return loss, clip_frac


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: logsumexp(z) - Σ p·z."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over unmasked tokens: 1 = perfect critic, 0 = no better than
    the mean, negative = worse. NaN when the returns do not vary."""
    var_returns = masked_var(returns, mask, unbiased=False)
    var_err = masked_var(returns - values, mask, unbiased=False)
    if var_returns == 0:
        return torch.tensor(float("nan"))
    return 1 - var_err / var_returns


class FixedKLController:
    """β stays where it is set."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. (2019): move β proportionally towards a target KL.

        e = clip(KL / target - 1, -0.2, 0.2),    β ← β·(1 + e·n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])
