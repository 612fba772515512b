"""Paired deltas over seeds: the sign-flip test, Holm, TOST, the interval and its coverage."""

import itertools
import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from diffsort_reorder.study.stats import (
    CI_METHOD,
    EXACT_UP_TO,
    SKEWED_SHAPE,
    PairedDelta,
    beats,
    family,
    holm,
    interval,
    interval_bounds,
    minimum_detectable_effect,
    paired_delta,
    sign_flip_p,
    tost,
)

TOL = 1e-12
SIMULATIONS = 4000  # per coverage cell: a standard error of 0.0035 at 95%
MIN_COVERAGE = 0.94
SEED_COUNTS = (3, 5, 10, 20)


def brute_sign_flip_p(diffs):
    """Every sign pattern, in plain Python."""
    n = len(diffs)
    observed = abs(sum(diffs) / n)
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, diffs, strict=True)) / n) >= observed - 1e-9
        for signs in itertools.product((1, -1), repeat=n)
    )
    return hits / 2**n


def brute_holm(p):
    """Holm as textbooks state it: the i-th smallest times (m - i + 1), running max, cap 1."""
    kept = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    out, running = [math.nan] * len(p), 0.0
    for rank, (v, i) in enumerate(kept):
        running = max(running, min(1.0, (len(kept) - rank) * v))
        out[i] = running
    return out


def draws(kind, n, rng):
    """(SIMULATIONS, n) differences of mean 0: standard normal, or a centred unit-variance gamma
    of shape SKEWED_SHAPE (skewness 1.41)."""
    if kind == "normal":
        return rng.standard_normal((SIMULATIONS, n))
    k = SKEWED_SHAPE
    return (rng.gamma(k, 1.0, (SIMULATIONS, n)) - k) / math.sqrt(k)


def coverage(kind, n, level=0.95):
    rng = np.random.default_rng(1000 * n + (kind == "skewed"))
    low, high = interval_bounds(draws(kind, n, rng), level)
    return float(np.mean((low <= 0) & (0 <= high)))


# sign-flip test


@pytest.mark.parametrize(
    "diffs, expected",
    [
        ([0.1, 0.2, 0.3], 2 / 8),  # all positive: only all+ and all- reach the observed mean
        ([0.05] * 8, 2 / 256),  # steady difference over 8 seeds
        ([0.1, -0.1, 0.2], 6 / 8),  # |sum| >= 0.2 for all patterns but +-- and -++ (sum 0)
        ([0.0, 0.0, 0.0], 1.0),
        ([0.0] * 20, 1.0),  # the Monte Carlo branch
        ([0.3], 1.0),
    ],
)
def test_sign_flip_p_by_hand(diffs, expected):
    assert sign_flip_p(diffs) == pytest.approx(expected, abs=TOL)


def test_a_steady_difference_over_three_seeds_is_not_significant():
    d = paired_delta({1: 0.5, 2: 0.6, 3: 0.7}, {1: 0.4, 2: 0.5, 3: 0.6})
    assert d.delta == pytest.approx(0.1) and d.p_value == pytest.approx(0.25)
    assert not d.significant and not beats(d)


@pytest.mark.parametrize("n", [2, 5, 9, 12])
def test_sign_flip_p_equals_brute_force_and_ignores_sign_and_order(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        diffs = list(rng.normal(0.01, 0.02, size=n))
        p = sign_flip_p(diffs)
        assert p == pytest.approx(brute_sign_flip_p(diffs), abs=TOL)
        assert sign_flip_p([-d for d in diffs]) == pytest.approx(p, abs=TOL)
        assert sign_flip_p(diffs[::-1]) == pytest.approx(p, abs=TOL)


def test_sign_flip_monte_carlo_agrees_with_enumeration():
    n = EXACT_UP_TO + 1
    diffs = np.random.default_rng(7).normal(0.004, 0.02, size=n)
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # (2**n, n)
    exact = np.mean(np.abs((1 - 2 * bits) @ diffs) >= abs(diffs.sum()) - 1e-12)
    p = sign_flip_p(diffs)
    assert 0.05 < exact < 0.95  # a p-value the check can see errors in
    assert p == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 200_000))
    assert sign_flip_p(diffs, seed=1) != p  # sampled, yet reproducible
    assert sign_flip_p(diffs) == p


def test_sign_flip_p_rejects_a_table():
    with pytest.raises(ValueError, match="1d"):
        sign_flip_p([[0.1, 0.2]])


# Holm


def test_holm_by_hand():
    # sorted: .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 = .04 -> running max .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=TOL)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped


def test_holm_leaves_nan_out_of_the_family():
    out = holm([0.01, math.nan, 0.04])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.04], abs=TOL)


@pytest.mark.parametrize("m", [1, 3, 8, 25])
def test_holm_equals_a_plain_reference(m):
    rng = np.random.default_rng(m)
    p = rng.uniform(0, 0.2, size=m)
    p[rng.random(m) < 0.2] = math.nan
    p[: m // 3] = p[0]  # ties
    got = holm(p)
    assert got == pytest.approx(brute_holm(list(p)), abs=TOL, nan_ok=True)
    kept = ~np.isnan(p)
    order = np.argsort(p[kept])
    assert np.all(np.diff(got[kept][order]) >= 0) and np.all(got[kept] >= p[kept])


def test_family_applies_holm_and_significance_follows_it():
    steady = {s: 0.05 + 0.001 * s for s in range(1, 7)}  # 6 seeds, p = 2/64 = 0.03125
    base = {s: 0.0 for s in range(1, 7)}
    alone = paired_delta(steady, base)
    assert alone.p_value == pytest.approx(2 / 64) and math.isnan(alone.p_holm)
    assert alone.significant and beats(alone)
    fam = family([alone, alone, PairedDelta.none()])
    assert [d.p_holm for d in fam[:2]] == pytest.approx([2 * 2 / 64] * 2)
    assert math.isnan(fam[2].p_holm) and not fam[2].significant
    assert not fam[0].significant and not beats(fam[0])  # 0.0625 after correction
    assert alone.with_holm(0.01).significant and math.isnan(alone.p_holm)  # a new instance


# TOST


def test_tost_shows_equal_methods_equivalent():
    diffs = np.random.default_rng(0).normal(0.0, 0.01, size=20)
    assert tost(diffs) < 0.05


def test_tost_does_not_call_a_five_point_difference_equivalent():
    diffs = np.random.default_rng(0).normal(0.05, 0.01, size=20)
    assert tost(diffs) > 0.05 and sign_flip_p(diffs) < 0.05


def test_tost_by_hand_and_few_values():
    # mean 0.01, so the upper margin decides: t = (0.01 - 0.02) / (sd / sqrt(4)), 3 dof
    diffs = [0.0, 0.01, 0.02, 0.01]
    sd = statistics.stdev(diffs)
    expected = scipy_stats.t.cdf((0.01 - 0.02) / (sd / 2), 3)
    assert tost(diffs) == pytest.approx(expected, rel=1e-9)
    assert math.isnan(tost([0.01]))
    assert tost([0.01] * 3) == 0.0 and tost([0.03] * 3) == 1.0


# the interval


@pytest.mark.parametrize("kind", ["normal", "skewed"])
@pytest.mark.parametrize("n", SEED_COUNTS)
def test_interval_covers_at_small_n(n, kind):
    assert coverage(kind, n) >= MIN_COVERAGE


def test_a_narrower_interval_would_not_cover_skewed_differences():
    """The same construction at 90% (which is the plain Student t 95% interval) undercovers
    skewed differences, so the coverage test above has teeth."""
    for n in SEED_COUNTS:
        ours, narrower = coverage("skewed", n), coverage("skewed", n, level=0.90)
        assert ours > narrower + 0.01
    assert all(coverage("skewed", n, level=0.90) < MIN_COVERAGE for n in SEED_COUNTS[:3])


def test_interval_by_hand():
    diffs = [0.10, 0.11, 0.09]
    low, high, how = interval(diffs)
    # the t quantile at 1 - 0.05 / 4 with 2 degrees of freedom, in closed form
    p = 1 - 0.05 / 4
    t = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    half = t * statistics.stdev(diffs) / math.sqrt(3)
    assert how == CI_METHOD and t == pytest.approx(6.2053, abs=1e-4)
    assert (low, high) == pytest.approx((0.1 - half, 0.1 + half), abs=TOL)
    rows = np.array([diffs, [0.2, 0.1, 0.3]])  # (2, 3): vectorised over rows
    lows, highs = interval_bounds(rows)
    assert lows[0] == pytest.approx(low, abs=TOL) and highs[0] == pytest.approx(high, abs=TOL)
    assert lows[1] < 0.2 < highs[1]


def test_interval_is_finite_from_two_values_and_nan_below():
    low, high, how = interval([0.1, 0.3])
    assert math.isfinite(low) and math.isfinite(high) and low < 0.2 < high
    low, high, how = interval([0.1])
    assert math.isnan(low) and math.isnan(high) and how == "none"


# paired deltas


def test_paired_delta_pairs_by_seed_in_any_order():
    # Seed 3 is easy for both: pairing removes it.
    method = {3: 0.90, 1: 0.40, 5: 0.7, 2: 0.51}  # seed 5 has no partner
    reference = {2: 0.40, 4: 0.5, 1: 0.30, 3: 0.81}  # nor has seed 4
    d = paired_delta(method, reference)
    assert d.pairs == 3 and d.delta == pytest.approx(0.1, abs=TOL)
    low, high, how = interval([0.10, 0.11, 0.09])
    assert (d.low, d.high) == pytest.approx((low, high), abs=TOL) and d.ci == how == CI_METHOD
    assert d.p_value == pytest.approx(0.25) and d.p_tost == pytest.approx(tost([0.1, 0.11, 0.09]))
    # the interval excludes 0, yet three seeds cannot show a difference
    assert d.low > 0 and not d.significant
    assert paired_delta(dict(sorted(method.items())), reference) == d


def test_a_significantly_worse_method_does_not_beat_its_reference():
    rng = np.random.default_rng(3)
    base = {s: 0.5 + 0.05 * rng.standard_normal() for s in range(10)}
    worse = {s: v - 0.05 + 0.005 * rng.standard_normal() for s, v in base.items()}
    d = paired_delta(worse, base)
    assert d.significant and d.delta < 0 and d.high < 0 and not beats(d)
    assert beats(paired_delta(base, worse))


def test_one_seed_and_no_seed():
    d = paired_delta({1: 0.5}, {1: 0.4})
    assert math.isnan(d.low) and not d.significant and d.delta == pytest.approx(0.1)
    assert d.p_value == 1.0
    none = paired_delta({1: 0.5}, {})
    assert none.pairs == 0 and math.isnan(none.delta) and math.isnan(none.p_value)
    assert not none.significant and not beats(none)
    assert PairedDelta.none().ci == "none" and not PairedDelta.none().significant


# minimum detectable effect


def test_minimum_detectable_effect_shrinks_with_seeds():
    alpha = 0.05 / 8
    mdes = [minimum_detectable_effect(0.02, n, alpha) for n in (9, 10, 20, 40)]
    assert all(math.isfinite(m) for m in mdes) and mdes == sorted(mdes, reverse=True)
    assert minimum_detectable_effect(0.02, 3, alpha) == math.inf  # 2/8 > alpha
    assert minimum_detectable_effect(0.02, 8, alpha) == math.inf  # 2/256 > 0.05/8
    assert minimum_detectable_effect(0.02, 1, 0.5) == math.inf
    # (t(0.975, 19) + t(0.8, 19)) * sd / sqrt(20) = (2.0930 + 0.8610) * 0.02 / sqrt(20)
    assert minimum_detectable_effect(0.02, 20, 0.05) == pytest.approx(
        2.9540 * 0.02 / math.sqrt(20), rel=1e-3
    )
