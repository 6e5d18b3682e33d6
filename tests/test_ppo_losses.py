"""PPO's pure functions (cai/train/losses.py, PPO section) against numbers worked out by hand.
The arithmetic is in the comments; math.log is used only where a logarithm must be exact."""

from __future__ import annotations

import math

import pytest
import torch

from cai.train.losses import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_var,
    masked_whiten,
    normalize_scores,
    penalize_missing_eos,
    policy_loss,
    response_mask,
    shape_rewards,
    value_loss,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected, tol=1e-6):
    assert torch.allclose(torch.as_tensor(actual, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=tol), (actual, expected)


def test_masked_mean_var_whiten():
    values = t([1.0, 2.0, 3.0, 4.0, 100.0])
    mask = t([1, 1, 1, 1, 0])
    # mean of 1..4 = 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5
    close(masked_mean(values, mask), 2.5)
    close(masked_var(values, mask), 5 / 3)  # unbiased: 5 / (4 - 1)
    close(masked_var(values, mask, unbiased=False), 5 / 4)
    close(masked_mean(t([1.0, 3.0], [5.0, 0.0]), t([1, 1], [1, 0]), dim=1), [2.0, 5.0])
    # std = sqrt(5/3) = 1.2909944; (x - 2.5) / std = -1.161895, -0.387298, 0.387298, 1.161895
    # (the masked 100 is left out of the statistics; what comes back there is not used)
    w = masked_whiten(values, mask)
    close(w[0, :4], [-1.161895, -0.387298, 0.387298, 1.161895])
    # shift_mean=False rescales only: the mean 2.5 is added back
    close(masked_whiten(values, mask, shift_mean=False)[0, :4], [1.338105, 2.112702, 2.887298, 3.661895])


def test_response_mask_keeps_first_eos_and_drops_the_rest():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert response_mask(ids, eos_token_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_kl_estimators_on_given_logprobs():
    logp = t([math.log(0.5), math.log(0.2)])
    ref = t([math.log(0.25), math.log(0.4)])
    # k1 = log p - log ref: log(0.5/0.25) = log 2 = 0.693147; log(0.2/0.4) = -0.693147
    close(kl_k1(logp, ref), [0.693147, -0.693147])
    # k3 = (r - 1) - log r, r = ref/p: r = 0.5 -> -0.5 + 0.693147 = 0.193147; r = 2 -> 1 - 0.693147
    close(kl_k3(logp, ref), [0.193147, 0.306853])
    close(kl_estimate(logp, ref, "k3"), kl_k3(logp, ref))
    assert (kl_k3(logp, ref) >= 0).all()
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(logp, ref, "k2")


def test_score_normalisation_and_missing_eos_penalty():
    # (3 - 1) / 2 = 1; (0 - 1) / 2 = -0.5
    close(normalize_scores(t([3.0, 0.0]), mean=1.0, std=2.0), [1.0, -0.5])
    close(penalize_missing_eos(t([1.0, -0.5]), torch.tensor([True, False]), penalty=1.0), [1.0, -1.5])


def test_shape_rewards_puts_score_on_last_response_token():
    scores = torch.tensor([2.0, -1.0], dtype=torch.float64)
    kl = t([0.1, 0.2, 0.3], [0.5, 0.4, 9.0])
    mask = t([1, 1, 1], [1, 1, 0])
    # row 0: -0.5·KL = -0.05, -0.1, -0.15; the last token also gets +2 -> 1.85
    # row 1: -0.25, -0.2 - 1 = -1.2; the padded third token gets nothing (its KL 9 is ignored)
    close(shape_rewards(scores, kl, mask, beta=0.5), [[-0.05, -0.1, 1.85], [-0.25, -1.2, 0.0]])


def test_gae_by_hand():
    gamma, lam = 0.9, 0.8  # γλ = 0.72
    rewards = t([0.0, 0.0, 1.0, 0.0], [0.1, 0.0, 0.0, -1.0])
    values = t([0.5, 0.4, 0.2, 9.0], [0.0, 0.0, 0.0, 0.0])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # row 0 ends at t=2 (t=3 is padding, its value 9 must not leak in):
    #   t=2: δ = 1 + 0 - 0.2 = 0.8;                A2 = 0.8
    #   t=1: δ = 0 + 0.9·0.2 - 0.4 = -0.22;        A1 = -0.22 + 0.72·0.8 = 0.356
    #   t=0: δ = 0 + 0.9·0.4 - 0.5 = -0.14;        A0 = -0.14 + 0.72·0.356 = 0.11632
    #   returns = A + V = 0.61632, 0.756, 1.0, (masked) 0
    # row 1, V = 0 so δ_t = r_t:
    #   A3 = -1; A2 = 0.72·-1 = -0.72; A1 = 0.72·-0.72 = -0.5184; A0 = 0.1 + 0.72·-0.5184 = -0.273248
    close(adv, [[0.11632, 0.356, 0.8, 0.0], [-0.273248, -0.5184, -0.72, -1.0]])
    close(ret, [[0.61632, 0.756, 1.0, 0.0], [-0.273248, -0.5184, -0.72, -1.0]])
    # γ = λ = 1, V = 0: every advantage is the sum of the rewards still to come
    adv1, _ = gae(rewards, torch.zeros_like(values), mask, 1.0, 1.0)
    close(adv1, [[1.0, 1.0, 1.0, 0.0], [-0.9, -1.0, -1.0, -1.0]])


def test_policy_loss_clipping_cases():
    old = torch.zeros(1, 5, dtype=torch.float64)
    logp = t([math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.7), math.log(50.0)])
    adv = t([1.0, 1.0, -1.0, -1.0, 1.0])
    mask = t([1, 1, 1, 1, 0])
    loss, clip_frac, approx_kl = policy_loss(logp, old, adv, mask, clip_range=0.2)
    # ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2   (clipped)
    # ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5   (unclipped)
    # ratio 1.1, A=-1: max( 1.1,  1.1) =  1.1   (inside the range)
    # ratio 0.7, A=-1: max( 0.7,  0.8) =  0.8   (clipped)
    # the masked 5th token (ratio 50) does not count
    close(loss, (-1.2 - 0.5 + 1.1 + 0.8) / 4)  # = 0.05
    close(clip_frac, 2 / 4)
    # ½(log ρ)²: 0.5·(0.405465² + 0.693147² + 0.095310² + 0.356675²) / 4
    #          = 0.5·(0.164402 + 0.480453 + 0.009084 + 0.127217) / 4 = 0.0976445
    close(approx_kl, 0.0976445)
    # gradient flows only through the unclipped tokens: d/dlogp of -A·ρ = -A·ρ / 4
    logp = logp.clone().requires_grad_(True)
    policy_loss(logp, old, adv, mask, 0.2)[0].backward()
    close(logp.grad, [[0.0, -0.5 / 4, 1.1 / 4, 0.0, 0.0]])


def test_value_loss_clipping_cases():
    old = t([0.0, 0.0, 0.0])
    values = t([0.5, -0.1, 0.3])
    returns = t([1.0, 0.0, -1.0])
    mask = t([1, 1, 1])
    loss, clip_frac = value_loss(values, old, returns, mask, clip_range=0.2)
    # t0: V 0.5 -> clipped 0.2: max((0.5-1)², (0.2-1)²) = max(0.25, 0.64) = 0.64 (clipped larger)
    # t1: V -0.1 inside the range: (−0.1)² = 0.01
    # t2: V 0.3 -> clipped 0.2: max(1.3², 1.2²) = 1.69
    # ½·(0.64 + 0.01 + 1.69) / 3 = 0.39
    close(loss, 0.39)
    close(clip_frac, 1 / 3)


def test_entropy_and_explained_variance():
    # uniform over 4: log 4 = 1.386294; p = (½, ¼, ¼): ½ln2 + 2·¼·ln4 = 1.039721
    close(entropy_from_logits(t([0.0, 0.0, 0.0, 0.0])), 1.386294)
    close(entropy_from_logits(t([math.log(0.5), math.log(0.25), math.log(0.25)])), 1.039721)
    mask = t([1, 1, 1, 0])
    returns = t([1.0, 2.0, 3.0, 7.0])
    close(explained_variance(returns, returns, mask), 1.0)
    # V = 2 everywhere: R - V = (-1, 0, 1), same variance as R -> 0
    close(explained_variance(t([2.0, 2.0, 2.0, 0.0]), returns, mask), 0.0)
    # V = 0: Var(R - V) = Var(R) -> 0 as well; V = -R: Var(2R) = 4·Var(R) -> 1 - 4 = -3
    close(explained_variance(-returns, returns, mask), -3.0)


def test_adaptive_kl_controller_moves_beta_towards_target():
    # β = 0.1, target 6, horizon 10000, 256 steps per update
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    up.update(12.0, n_steps=256)  # e = clip(12/6 - 1) = clip(1) = 0.2 -> β·(1 + 0.2·0.0256)
    close(up.value, 0.1 * 1.00512)
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    down.update(3.0, n_steps=256)  # e = clip(-0.5) = -0.2 -> β·(1 - 0.00512)
    close(down.value, 0.1 * 0.99488)
    near = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    near.update(6.6, n_steps=256)  # e = 0.1, inside the clip -> β·(1 + 0.00256)
    close(near.value, 0.1 * 1.00256)
    restored = AdaptiveKLController(1.0, target=1.0, horizon=1)
    restored.load_state_dict(up.state_dict())
    assert restored.state_dict() == up.state_dict()
    fixed = FixedKLController(0.05)
    fixed.update(100.0, n_steps=256)
    assert fixed.value == 0.05
    copy = FixedKLController(1.0)
    copy.load_state_dict(fixed.state_dict())
    assert copy.value == 0.05
