"""The AI-feedback arithmetic with hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from cai.feedback import clamp, consistent, ensemble, entropy_bits, option_prob, pair_prob
from cai.label.labeler import verdict


def test_option_prob_is_softmax_over_two_log_probs():
    assert option_prob(-1.0, -2.0) == pytest.approx(math.e ** -1 / (math.e ** -1 + math.e ** -2))
    assert option_prob(-1.0, -2.0) == pytest.approx(0.7310585786300049)
    assert option_prob(-3.0, -3.0) == 0.5
    assert option_prob(math.log(0.2), math.log(0.6)) == pytest.approx(0.25)
    # Only the difference matters, and extreme values neither overflow nor lose the answer.
    assert option_prob(-1000.0, -1001.0) == pytest.approx(option_prob(0.0, -1.0))
    assert option_prob(-800.0, 0.0) == pytest.approx(math.exp(-800.0), rel=1e-9)
    assert option_prob(0.0, -800.0) == 1.0


def test_pair_prob_averages_first_in_both_positions():
    # first is (A) in order ab: 0.7; first is (B) in order ba where p(A) = 0.2 -> 0.8.
    assert pair_prob(0.7, 0.2) == pytest.approx(0.75)
    # A judge that always says (A) with 0.9 gives no preference at all.
    assert pair_prob(0.9, 0.9) == pytest.approx(0.5)


def test_ensemble_is_the_mean_over_principles():
    assert ensemble([0.75, 0.55, 0.4]) == pytest.approx(1.7 / 3)
    assert ensemble([0.9]) == 0.9
    with pytest.raises(ValueError):
        ensemble([])


def test_clamp_to_cot_range():
    assert clamp(0.99) == 0.6 and clamp(0.01) == 0.4 and clamp(0.55) == 0.55
    assert clamp(0.7, 0.2, 0.8) == 0.7
    with pytest.raises(ValueError):
        clamp(0.5, 0.6, 0.4)


def test_consistency_needs_the_same_winner_in_both_orders():
    assert consistent(0.7, 0.2)       # first wins both
    assert consistent(0.3, 0.9)       # second wins both
    assert not consistent(0.7, 0.8)   # (A) wins both: position, not content
    assert not consistent(0.5, 0.2)   # a tie names no winner


def test_entropy_bits():
    assert entropy_bits(0.5) == pytest.approx(1.0)
    assert entropy_bits(1.0) == 0.0 and entropy_bits(0.0) == 0.0
    assert entropy_bits(0.25) == pytest.approx(0.8112781244591328)


def test_verdict_from_log_probs_by_hand():
    v = verdict("p1", (math.log(0.7), math.log(0.3)), (math.log(0.2), math.log(0.8)))
    assert v.p_a == pytest.approx([0.7, 0.2])
    assert v.p_first == pytest.approx(0.75) and v.consistent
    # CoT clamps each order before averaging: 0.99 -> 0.6, 0.02 -> 0.4.
    c = verdict("p1", (math.log(0.99), math.log(0.01)), (math.log(0.02), math.log(0.98)),
                clamp_to=(0.4, 0.6))
    assert c.p_a == pytest.approx([0.6, 0.4]) and c.p_first == pytest.approx(0.6)
    assert c.consistent
    # Three principles ensembled: (0.75 + 0.6 + 0.35) / 3.
    w = verdict("p3", (math.log(0.3), math.log(0.7)), (math.log(0.6), math.log(0.4)))
    assert w.p_first == pytest.approx(0.35)
    assert ensemble([v.p_first, c.p_first, w.p_first]) == pytest.approx(1.7 / 3)
