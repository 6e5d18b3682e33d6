"""cai.stats against numbers worked out by hand."""

import math

import pytest

from cai import stats


def test_wilson_hand_computed():
    z = stats.Z95
    # 0 of 10: lower 0, upper z^2 / (n + z^2)
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z))
    # 5 of 10: symmetric around 0.5, half-width z*sqrt(.25/10 + z^2/400) / (1 + z^2/10)
    lo, hi = stats.wilson(5, 10)
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    assert (lo, hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert stats.wilson(0, 0) == (0.0, 1.0)
    lo, hi = stats.wilson(8, 10)  # p̂ = 0.8: centre 0.7163..., half 0.2266...
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert stats.proportion(3, 4)["rate"] == 0.75 and stats.proportion(0, 0)["rate"] is None


def test_paired_difference_hand_computed():
    # differences 1, 2, 3: mean 2, sd 1 (n - 1), half-width z / sqrt(3)
    d = stats.paired_difference([1.0, 2.5, 3.0], [0.0, 0.5, 0.0])
    assert (d["n"], d["mean"], d["sd"]) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert d["ci95"] == [pytest.approx(2 - stats.Z95 / math.sqrt(3)),
                         pytest.approx(2 + stats.Z95 / math.sqrt(3))]
    # the same shift on every item has no spread: the interval closes on it
    assert stats.paired_difference([0.2, 0.7], [0.1, 0.6])["ci95"] == [pytest.approx(0.1)] * 2
    assert stats.sample_sd([1.0, 2.0, 3.0]) == pytest.approx(1.0) and stats.sample_sd([5.0]) is None
    assert stats.paired_difference([1.0], [0.5]) == {"n": 1, "mean": 0.5, "sd": None, "ci95": None}
    assert stats.paired_difference([], [])["mean"] is None
    with pytest.raises(ValueError, match="2 values after, 1 before"):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_quantiles_and_describe():
    xs = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4
    assert stats.quantile(xs, 0.5) == 2.5
    assert stats.quantile(xs, 0.9) == pytest.approx(3.7)  # pos 2.7 -> 3 + .7 * 1
    d = stats.describe(xs)
    assert (d["mean"], d["median"], d["min"], d["max"], d["n"]) == (2.5, 2.5, 1.0, 4.0, 4)
    assert stats.describe([])["mean"] is None


def test_pearson_spearman():
    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 1,2,3,4; y = 1,3,2,4: cov = (-1.5*-1.5 + -.5*.5 + .5*-.5 + 1.5*1.5)/.. = 4/5 of var
    assert stats.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # monotone but not linear: Spearman 1, Pearson below 1
    xs, ys = [1, 2, 3, 4], [1, 10, 100, 1000]
    assert stats.spearman(xs, ys) == pytest.approx(1.0)
    assert stats.pearson(xs, ys) < 0.95
    assert stats.ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert stats.pearson([1, 1, 1], [1, 2, 3]) is None


def test_win_rate_counts_ties_half():
    w = stats.win_rate([1, 1, 0.5, 0])
    assert (w["wins"], w["ties"], w["losses"], w["rate"], w["n"]) == (2, 1, 1, 0.625, 4)


def test_mean_hit_and_pct():
    assert stats.mean([1.0, 2.0, 4.0]) == pytest.approx(7 / 3) and stats.mean([]) is None
    assert [stats.hit(2, 1), stats.hit(1, 1), stats.hit(0, 1)] == [1.0, 0.5, 0.0]
    assert stats.pct(0.125) == "12.5%" and stats.pct(None) == "-"
    assert stats.pct(None, missing="n/a") == "n/a"
    # a proportion: 1 of 8 with its Wilson interval (0.0224, 0.4709) rounded to whole percent
    assert stats.pct(stats.proportion(1, 8)) == "12.5% [2-47] n=8"
    assert stats.pct(stats.proportion(0, 0)) == "-" and stats.pct({"rate": 0.5}) == "50.0%"


# --------------------------------------------------------------------------- reward-model pair metrics by hand


def test_pair_metrics_by_hand():
    # Δ = [2, -1, 0, 1]; labels: chosen better except pair 3 (p=0.2: rejected better)
    m = stats.pair_metrics([3.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.2],
                     chosen_lengths=[10, 5, 3, 3], rejected_lengths=[5, 5, 9, 9])
    # hits: 1, 0, 0.5 (tie), 0 (Δ=1 but rejected preferred) -> 1.5 / 4
    assert m["accuracy"] == pytest.approx(0.375)
    assert m["margin"] == pytest.approx(0.5)
    assert m["rewards/chosen"] == pytest.approx(1.25)
    assert m["rewards/rejected"] == pytest.approx(0.75)
    # longer preferred: 1, 0.5 (equal), 0, 1 (rejected preferred and longer) -> 2.5 / 4
    assert m["length_baseline"] == pytest.approx(0.625)
    assert m["n"] == 4


def test_accuracy_by_principle_by_hand():
    # Δ = [2, -1, 0, 1, 3, -2]; pair 4 (p=0.2) prefers rejected; pair 5 (p=0.5) has no side
    m = stats.accuracy_by_principle(
        [3.0, 0.0, 1.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0, 2.0],
        [1.0, 1.0, 1.0, 0.2, 0.9, 0.5],
        [["crime"], ["crime", "privacy"], ["privacy"], [], ["crime"], ["privacy"]])
    # crime: pairs 1, 2, 5 -> hits 1, 0, 1 = 2/3; privacy: pairs 2, 3 -> 0, 0.5 (tie) = 1/4
    # (pair 6 left out: p = 0.5); pair 4 has no principle: Δ=1 but rejected preferred -> 0
    assert list(m) == [stats.NO_PRINCIPLE, "crime", "privacy"]
    assert (m["crime"]["n"], m["crime"]["accuracy"]) == (3, pytest.approx(2 / 3))
    assert (m["privacy"]["n"], m["privacy"]["accuracy"]) == (2, pytest.approx(0.25))
    assert (m[stats.NO_PRINCIPLE]["n"], m[stats.NO_PRINCIPLE]["accuracy"]) == (1, 0.0)
    assert m["crime"]["accuracy_ci95"] == pytest.approx(list(stats.wilson(2, 3)))


def test_ece_and_wilson_by_hand():
    # one pair, Δ = ln 3: confidence σ(ln 3) = 0.75; p = 1: correctness 1 -> |0.75 - 1|
    assert stats.expected_calibration_error([math.log(3)], [1.0]) == pytest.approx(0.25)
    # predicted rejected (Δ < 0) with p = 0.2: correctness 0.8, confidence 0.75
    assert stats.expected_calibration_error([-math.log(3)], [0.2]) == pytest.approx(0.05)
    assert stats.expected_calibration_error([1.0], [0.5]) is None  # no preferred side
    # the reliability bins behind it: σ(ln 3) = 0.75 lands in bin 5 of [0.5, 1] by tenths,
    # σ(ln 9) = 0.9 in bin 8; two pairs in the first (one right, one wrong), one in the second
    bins = stats.reliability_bins([math.log(3), -math.log(3), math.log(9), 0.3], [1.0, 1.0, 1.0, 0.5])
    assert bins == [pytest.approx({"confidence": 0.75, "accuracy": 0.5, "count": 2}),
                    pytest.approx({"confidence": 0.9, "accuracy": 1.0, "count": 1})]
    # ECE from those bins: 2/3 * |0.75 - 0.5| + 1/3 * |0.9 - 1|
    assert stats.expected_calibration_error([math.log(3), -math.log(3), math.log(9)], [1.0] * 3) \
        == pytest.approx(2 / 3 * 0.25 + 1 / 3 * 0.1)
