"""Paired comparisons over seeds: a method against a reference run on the same seeds.

Every method of a study re-runs its best config on the same seeds, and a run's seed fixes its data
(planted draws its keys and images from it), its initialization and its sampling. So the
difference ``method[seed] - reference[seed]`` removes what a seed does to both, and its mean over
seeds is the paired effect. Its 95% interval is a Student t-interval below
:data:`BOOTSTRAP_FROM` seeds (a bootstrap over 3 seeds has 10 distinct resamples and undercovers)
and a percentile bootstrap with :data:`RESAMPLES` resamples (as REOrder) from there on.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
RESAMPLES = 2000
BOOTSTRAP_FROM = 10  # seeds


def interval(diffs: list[float], seed: int = 0) -> tuple[float, float, str]:
    """The 95% interval of the mean of ``diffs`` and how it was made (``t`` or ``bootstrap``);
    NaN bounds for fewer than two values."""
    n = len(diffs)
    if n < 2:
        return math.nan, math.nan, "none"
    mean = statistics.fmean(diffs)
    if n < BOOTSTRAP_FROM:
        half = scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
        return mean - half, mean + half, "t"
    rng = np.random.default_rng(seed)
    values = np.asarray(diffs)
    means = values[rng.integers(0, n, size=(RESAMPLES, n))].mean(axis=1)  # (RESAMPLES,)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high), "bootstrap"


@dataclass(frozen=True)
class PairedDelta:
    """A paired difference: its mean over the common seeds, its interval (``low``, ``high``;
    NaN for fewer than two pairs) made by ``ci`` (``t``, ``bootstrap`` or ``none``), whether
    the interval excludes 0, and the number of pairs."""

    delta: float
    low: float
    high: float
    significant: bool
    pairs: int
    ci: str

    @classmethod
    def none(cls) -> PairedDelta:
        """No pairs (no reference to compare with)."""
        return cls(math.nan, math.nan, math.nan, False, 0, "none")


def paired_delta(values: dict[int, float], reference: dict[int, float]) -> PairedDelta:
    """``values - reference`` on their common seeds (``{seed: metric}`` each)."""
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds]
    low, high, how = interval(diffs)
    return PairedDelta(
        delta=statistics.fmean(diffs) if diffs else math.nan,
        low=low,
        high=high,
        significant=bool(low > 0 or high < 0),  # False for NaN bounds
        pairs=len(diffs),
        ci=how,
    )
