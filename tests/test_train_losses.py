"""The shared losses of cai/train/losses.py against numbers worked out by hand."""

import math

import pytest
import torch

from cai.train.losses import (bradley_terry_loss, logprobs_from_logits, masked_mean, masked_var,
                              masked_whiten)

R_CHOSEN = torch.tensor([2.0, 0.0])
R_REJECTED = torch.tensor([1.0, 1.0])  # Δ = [1, -1]
NLL_WIN = math.log(1 + math.exp(-1))  # -log σ(1)  = 0.31326...
NLL_LOSE = math.log(1 + math.exp(1))  # -log σ(-1) = 1.31326...


def test_bt_hard_labels_is_the_standard_loss():
    loss = bradley_terry_loss(R_CHOSEN, R_REJECTED)
    assert loss.item() == pytest.approx((NLL_WIN + NLL_LOSE) / 2, abs=1e-6)  # 0.81326
    ones = bradley_terry_loss(R_CHOSEN, R_REJECTED, torch.tensor([1.0, 1.0]))
    assert ones.item() == pytest.approx(loss.item(), abs=1e-7)


def test_bt_soft_labels():
    loss = bradley_terry_loss(R_CHOSEN, R_REJECTED, torch.tensor([0.75, 0.5]))
    pair1 = 0.75 * NLL_WIN + 0.25 * NLL_LOSE  # 0.56326
    pair2 = 0.5 * NLL_LOSE + 0.5 * NLL_WIN  # 0.81326
    assert loss.item() == pytest.approx((pair1 + pair2) / 2, abs=1e-6)  # 0.68826
    # p = 0 means rejected is the better answer: the same loss as the swapped pair
    swapped = bradley_terry_loss(R_REJECTED, R_CHOSEN, torch.tensor([1.0, 1.0]))
    assert bradley_terry_loss(R_CHOSEN, R_REJECTED, torch.tensor([0.0, 0.0])).item() == \
        pytest.approx(swapped.item(), abs=1e-6)


def test_bt_margin():
    loss = bradley_terry_loss(R_CHOSEN, R_REJECTED, margin=1.0)
    # Δ - m = [0, -2]: log 2 and log(1 + e^2)
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2, abs=1e-6)
    per_pair = bradley_terry_loss(R_CHOSEN, R_REJECTED, margin=torch.tensor([1.0, 0.0]))
    assert per_pair.item() == pytest.approx((math.log(2) + NLL_LOSE) / 2, abs=1e-6)


def test_bt_centering():
    loss = bradley_terry_loss(R_CHOSEN, R_REJECTED, center_coefficient=0.01)
    # (2 + 1)² = 9 and (0 + 1)² = 1 -> 0.01 * mean(9, 1) = 0.05 on top
    assert loss.item() == pytest.approx((NLL_WIN + NLL_LOSE) / 2 + 0.05, abs=1e-6)


def test_bt_gradient_pushes_chosen_up():
    rc = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(rc, torch.tensor([0.0])).backward()
    assert rc.grad.item() == pytest.approx(-0.5)  # d/dΔ -log σ(Δ) at 0 = -(1 - σ(0))


def test_masked_mean_and_var():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert masked_mean(values, mask).item() == pytest.approx(3.0)  # (1 + 2 + 6) / 3
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([1.5, 6.0])
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0  # empty mask: no NaN
    # deviations from 3: 4, 1, 9 -> 14 / 2 unbiased, 14 / 3 biased
    assert masked_var(values, mask).item() == pytest.approx(7.0)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(14 / 3)
    white = masked_whiten(values, mask)
    assert white[0, 0].item() == pytest.approx((1 - 3) / math.sqrt(7), abs=1e-6)
    assert masked_whiten(values, mask, shift_mean=False)[1, 2].item() == \
        pytest.approx((6 - 3) / math.sqrt(7) + 3, abs=1e-6)


def test_logprobs_from_logits():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]])  # softmax .25/.75
    labels = torch.tensor([[1, 1]])
    out = logprobs_from_logits(logits, labels)
    assert out[0].tolist() == pytest.approx([math.log(0.75), math.log(0.25)], abs=1e-6)
