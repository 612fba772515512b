"""Paired deltas over seeds and their intervals."""

import math
import statistics

import numpy as np
import pytest

from diffsort_reorder.study.stats import BOOTSTRAP_FROM, RESAMPLES, interval, paired_delta


def test_paired_delta_pairs_by_seed():
    # Seed 3 is easy for both: pairing removes it. Unpaired means would differ by 0.1 too, but
    # with a spread that hides it.
    method = {1: 0.40, 2: 0.51, 3: 0.90}
    reference = {1: 0.30, 2: 0.40, 3: 0.81, 4: 0.5}  # seed 4 has no partner: left out
    d = paired_delta(method, reference)
    assert d.pairs == 3 and d.delta == pytest.approx(0.1, abs=1e-12)
    assert d.low < d.delta < d.high and d.significant and d.ci == "t"
    # t-interval by hand: mean +- t(0.975, 2) * sd / sqrt(3), t = 4.303
    sd = statistics.stdev([0.10, 0.11, 0.09])
    assert d.high - d.delta == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-3)


def test_an_interval_across_zero_is_not_significant():
    d = paired_delta({1: 0.5, 2: 0.3, 3: 0.6}, {1: 0.4, 2: 0.45, 3: 0.5})
    assert d.low < 0 < d.high and not d.significant


def test_one_seed_has_no_interval():
    d = paired_delta({1: 0.5}, {1: 0.4})
    assert math.isnan(d.low) and not d.significant and d.delta == pytest.approx(0.1)


def test_bootstrap_from_many_seeds_covers_the_mean():
    rng = np.random.default_rng(0)
    diffs = list(rng.normal(0.05, 0.02, size=BOOTSTRAP_FROM + 5))
    low, high, how = interval(diffs)
    assert how == "bootstrap" and low < statistics.fmean(diffs) < high
    # about the t-interval's width at this many seeds
    t_low, t_high, _ = interval(diffs[: BOOTSTRAP_FROM - 1])
    assert 0.3 < (high - low) / (t_high - t_low) < 1.5
    assert RESAMPLES >= 2000
