"""gptjax/sweep_stats.py against hand computations: mean and sd over seeds, a paired t interval for three seeds, Welch's
interval with its Satterthwaite degrees of freedom, the grid point chosen on validation loss (lowest mean, ties,
points with a failed seed), a sample of one giving no interval, curves as a band, and the scaling-law fit on points
made from known constants (recovered, with standard errors that cover them; a held-out size predicted)."""

import math

import numpy as np
import pytest
from scipy import stats

from gptjax import sweep_stats as ss

T_975_DF2 = 4.302652729911275  # the t table's 0.975 quantile at 2 degrees of freedom (three seeds)


def test_summary_is_mean_and_sample_sd():
    s = ss.summarize([3.0, 3.5, 4.0])
    assert s.mean == pytest.approx(3.5) and s.n == 3
    assert s.sd == pytest.approx(math.sqrt((0.25 + 0 + 0.25) / 2))  # n - 1 in the denominator
    one = ss.summarize([2.5])
    assert (one.mean, one.sd, one.n) == (2.5, None, 1)  # no spread from one seed, and no crash
    with pytest.raises(ValueError, match="no values"):
        ss.summarize([])


def test_paired_interval_for_three_seeds_by_hand():
    arm = {0: 3.10, 1: 3.30, 2: 3.05}
    base = {2: 3.02, 0: 3.00, 1: 3.10}  # paired by seed, not by position
    # differences 0.10, 0.20, 0.03: mean 0.11, deviations -0.01, 0.09, -0.08
    sd = math.sqrt((0.01 ** 2 + 0.09 ** 2 + 0.08 ** 2) / 2)
    half = T_975_DF2 * sd / math.sqrt(3)
    d = ss.paired_difference(arm, base)
    assert d.method == "paired" and d.n == d.n_base == 3
    assert d.mean == pytest.approx(0.11)
    assert (d.low, d.high) == (pytest.approx(0.11 - half), pytest.approx(0.11 + half))
    assert (round(d.low, 4), round(d.high, 4)) == (-0.1022, 0.3222)  # the interval crosses 0: no difference shown
    assert ss.compare(arm, base) == d  # the same seeds: compare pairs them


def test_pairing_removes_the_seed_effect_welch_keeps():
    base = {0: 3.0, 1: 3.5, 2: 4.0}  # the seeds differ a lot ...
    arm = {s: v + 0.1 + 0.01 * s for s, v in base.items()}  # ... and the arm is 0.1 to 0.12 worse on every one
    paired, welch = ss.paired_difference(arm, base), ss.welch_difference(list(arm.values()), list(base.values()))
    assert paired.low > 0  # a consistent difference
    assert welch.low < 0 < welch.high  # lost in the seed-to-seed spread


def test_welch_interval_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    va, vb = 1.0 / 3, (20.0 / 3) / 4  # sample variances 1 and 20/3, over n
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert df == pytest.approx(4.0755, abs=1e-4)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    d = ss.welch_difference(a, b)
    assert d.method == "welch" and (d.n, d.n_base) == (3, 4) and d.mean == pytest.approx(-3.0)
    assert (d.low, d.high) == (pytest.approx(-3.0 - half), pytest.approx(-3.0 + half))
    assert ss.compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 6.0, 3: 8.0}) == d  # different seeds: Welch


def test_a_failed_seed_falls_back_to_welch():
    arm = {0: 3.1, 2: 3.3}  # seed 1 failed
    base = {0: 3.0, 1: 3.2, 2: 3.1}
    d = ss.compare(arm, base)
    assert d.method == "welch" and (d.n, d.n_base) == (2, 3) and d.mean == pytest.approx(3.2 - 3.1)
    assert d.low is not None and d.low < d.mean < d.high


def test_one_seed_gives_a_difference_without_interval():
    d = ss.compare({7: 3.4}, {7: 3.1})
    assert d.mean == pytest.approx(0.3) and d.low is None and d.high is None and d.n == 1
    w = ss.welch_difference([3.4, 3.5], [3.1])
    assert w.mean == pytest.approx(0.35) and w.low is None
    with pytest.raises(ValueError, match="no seed in common"):
        ss.paired_difference({0: 1.0}, {1: 1.0})


def test_choice_is_the_lowest_mean_over_seeds():
    points = {"lr=0.001": {0: 3.0, 1: 3.4, 2: 3.2},  # mean 3.2
              "lr=0.003": {0: 3.1, 1: 3.1, 2: 3.1},  # mean 3.1: lowest, though not lowest on seed 0
              "lr=0.01": {0: 2.9, 1: 3.6, 2: 3.5}}
    c = ss.choose_point(points, [0, 1, 2])
    assert c.point == "lr=0.003" and c.values == points["lr=0.003"] and c.incomplete == ()


def test_a_tie_goes_to_the_first_point_of_the_grid():
    points = {"a": {0: 3.0, 1: 3.2}, "b": {0: 3.2, 1: 3.0}, "c": {0: 3.1, 1: 3.1}}
    assert ss.choose_point(points, [0, 1]).point == "a"
    assert ss.choose_point(dict(reversed(points.items())), [0, 1]).point == "c"


def test_a_point_with_a_failed_seed_is_not_chosen():
    points = {"lr=0.001": {0: 3.3, 1: 3.4}, "lr=0.01": {0: 2.9}}  # lr=0.01 diverged on seed 1
    c = ss.choose_point(points, [0, 1])
    assert c.point == "lr=0.001" and c.incomplete == ("lr=0.01",)
    # no complete point: those with the most finished seeds compete
    c = ss.choose_point({"a": {0: 3.3}, "b": {0: 3.0}, "c": {}}, [0, 1])
    assert c.point == "b" and c.incomplete == ("c",)  # a competed: it has as many seeds as b
    none = ss.choose_point({"a": {}, "b": {}}, [0, 1])
    assert none.point is None and none.values == {} and none.incomplete == ("a", "b")


def test_band_is_mean_and_range_at_the_steps_every_seed_reached():
    b = ss.band([{10: 3.0, 20: 2.0, 30: 1.5}, {10: 4.0, 20: 2.4}, {10: 3.5, 20: 2.2, 30: 1.0}, {}])
    assert b.steps.tolist() == [10, 20]  # step 30 is missing from one seed
    assert b.mean.tolist() == pytest.approx([3.5, 2.2])
    assert b.low.tolist() == [3.0, 2.0] and b.high.tolist() == [4.0, 2.4]
    assert ss.band([]).steps.size == 0


SIZES = np.array([1e5, 3e5, 1e6, 3e6, 1e7, 3e7])
E, A, ALPHA = 1.7, 400.0, 0.34


def law(n):
    return E + A / n ** ALPHA


def test_power_law_fit_recovers_known_constants():
    fit = ss.fit_power_law(SIZES, law(SIZES))
    assert (fit.E, fit.A, fit.alpha) == (pytest.approx(E, rel=1e-5), pytest.approx(A, rel=1e-5),
                                         pytest.approx(ALPHA, rel=1e-5))
    assert fit.n_points == 6 and fit(1e8) == pytest.approx(law(1e8), rel=1e-6)


def test_power_law_standard_errors_cover_the_truth_under_noise():
    rng = np.random.default_rng(0)
    noisy = law(SIZES) * np.exp(rng.normal(0, 0.01, SIZES.size))  # 1% noise
    fit = ss.fit_power_law(SIZES, noisy)
    for value, se, truth in ((fit.E, fit.se_E, E), (fit.A, fit.se_A, A), (fit.alpha, fit.se_alpha, ALPHA)):
        assert 0 < se < abs(truth) and abs(value - truth) < 3 * se


def test_power_law_needs_four_points():
    with pytest.raises(ValueError, match="3 points; fitting E, A and alpha with their errors needs at least 4"):
        ss.fit_power_law(SIZES[:3], law(SIZES[:3]))
    with pytest.raises(ValueError, match="at least 4 different sizes"):
        ss.fit_power_law([1e5, 1e5, 1e6, 1e7], [3.0, 3.1, 2.5, 2.2])
    with pytest.raises(ValueError, match="positive"):
        ss.fit_power_law(SIZES, -law(SIZES))


def test_held_out_size_is_predicted_by_the_fit_without_it():
    held = ss.predict_held_out(SIZES, law(SIZES), -1)  # the largest: extrapolation
    assert held.size == 3e7 and held.loss == pytest.approx(law(3e7))
    assert held.fit.n_points == 5 and held.error == pytest.approx(0, abs=1e-6)
    bent = law(SIZES).copy()
    bent[-1] += 0.2  # a largest model that fell short (too few tokens for it)
    held = ss.predict_held_out(SIZES, bent, 5)
    assert held.error == pytest.approx(-0.2, abs=1e-4)  # the fit on the others did not see it coming
    with pytest.raises(ValueError, match="needs at least 4"):
        ss.predict_held_out(SIZES[:4], law(SIZES[:4]), 0)
