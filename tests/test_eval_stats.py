"""cai.eval.stats against numbers worked out by hand."""

import math

import pytest

from cai.eval import stats


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
