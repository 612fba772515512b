"""Paired comparisons over seeds: a method against a reference run on the same seeds.

Every method of a study re-runs its best config on the same seeds, and a run's seed fixes its data
(planted draws its keys and images from it), its initialization and its sampling. So the
difference ``method[seed] - reference[seed]`` removes what a seed does to both, and its mean over
seeds is the paired effect. A study has few seeds (3 by default), so every claim here is one that
holds at small n:

- **Is it different?** :func:`sign_flip_p`, the exact paired sign-flip permutation test (Fisher
  1935; Good, *Permutation Tests*, 2005, sec. 3.7): with n seeds its smallest p-value is
  ``2 / 2**n``, so 3 seeds (p >= 0.25) can never show a difference, however steady it is.
  :func:`holm` adjusts a table's p-values for its many comparisons (Holm 1979), :func:`family`
  applies it to a list of :class:`PairedDelta`, and :func:`beats` is "significantly better".
- **Is it the same?** :func:`tost`, two one-sided t-tests of equivalence within +-``margin``
  (Schuirmann 1987). "Matches" or "reaches" may be claimed only when it is < 0.05; a difference
  that is merely not significant is *not* a match.
- **How large is it?** :func:`interval`, a 95% interval for the mean difference that is the
  Student t-interval at the stricter nominal level 97.5%. Seed-to-seed differences can be skewed
  (a method that sometimes fails to train has a long tail), and the t-interval's two-sided
  coverage drops with skew at small n (Johnson 1978, JASA 73:536; Hall 1992, JRSS-B 54:221).
  Three seeds cannot estimate the skew, so no skewness correction can help at n = 3; a fixed,
  symmetric widening does. Simulated coverage at nominal 95% (40,000 draws per cell, seed 0;
  gamma k is ``(Gamma(k) - k) / sqrt(k)``, of skewness ``2 / sqrt(k)``)::

      n    normal  gamma k=4  gamma k=2  gamma k=1  lognormal    | plain t, gamma k=2
               skew 1.00  skew 1.41  skew 2.00  sigma .5 (1.75)
      3     0.975   0.966      0.955      0.927      0.957       | 0.919
      5     0.974   0.962      0.947      0.920      0.947       | 0.913
      10    0.974   0.961      0.951      0.930      0.949       | 0.923
      20    0.974   0.966      0.960      0.944      0.956       | 0.935

  It is 44% wider than the plain t-interval at 3 seeds, 26% at 5, 19% at 10 and 16% at 20.
  Rejected: the plain t-interval (last column); Hall's skewness-corrected t at 95% (0.931 at
  n = 3 and 0.932 at n = 5 for skew 1.41, and 1.6x as wide at n = 3: sample skewness from 3
  values is noise); Hall's at nominal 97.5% (covers skew 2 from n = 5 but is wider than this at
  every n); the studentized bootstrap (infinite at n = 3, 0.930 at n = 5 for skew 1.41); and the
  inversion of the sign-flip test (infinite up to n = 5, 0.93 at n = 8-12 for skew 1.41).
  Exponential-like differences (skew 2) still undercover at small n.

  The tests check coverage on normal and gamma k=2 differences (:data:`SKEWED_SHAPE`, skewness
  1.41): the 132 three-seed differences to ``row_major`` in the committed studies have a mean
  absolute sample skewness of 0.47, what gamma k=2 gives (normal 0.45, k=4 0.46, k=1 0.49).
  Three seeds barely tell these apart, so we guard against the middle of the 1-2 range.

The interval says how large a difference may be; whether it is there is the test's call. At
n = 3 the interval may exclude 0 while the test cannot (p >= 0.25), and the report follows the
test. :func:`minimum_detectable_effect` says how large a difference the test could see at all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
ALPHA = 0.05
EXACT_UP_TO = 16  # seeds: 2**16 sign patterns are enumerated, more are sampled
MC_RESAMPLES = 200_000
MC_CHUNK = 20_000
TIE_RTOL = 1e-9  # sign patterns whose |mean| equals the observed one up to rounding count as ties
EQUIVALENCE_MARGIN = 0.02  # two accuracy points
SKEWED_SHAPE = 2.0  # gamma shape of the tests' skewed differences: skewness 2 / sqrt(2) = 1.41
CI_METHOD = "t97.5"  # the label a PairedDelta's ``ci`` carries
INTERVAL = (  # how the interval is made, in a sentence for reports
    "Student t-intervals at nominal 97.5%, which cover 94.7-96.0% of differences as skewed "
    "as ours (skewness 1.4, simulated) at 3 to 20 seeds, where the plain 95% t-interval "
    "covers 91.3-93.5%"
)


def sign_flip_p(diffs, resamples: int = MC_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of "mean difference is 0".

    Under the null each difference is as likely to have either sign, so the observed
    ``|mean(diffs)|`` is compared with ``|mean(s * diffs)|`` over all ``2**n`` sign patterns ``s``
    (the observed one included) up to :data:`EXACT_UP_TO` values, and over ``resamples`` random
    patterns plus the observed one above (Fisher 1935; Good 2005, sec. 3.7). All-zero differences
    give 1; a steady nonzero difference gives ``2 / 2**n`` (0.25 at n = 3); no pairs give NaN.
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1:
        raise ValueError(f"'diffs' should be a 1d sequence but got shape {d.shape}")
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    threshold = observed - TIE_RTOL * np.abs(d).mean()  # <= 0 for all-zero diffs: p = 1
    if n <= EXACT_UP_TO:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # (2**n, n)
        means = (1 - 2 * bits) @ d / n  # (2**n,)
        return float(np.mean(np.abs(means) >= threshold))
    rng = np.random.default_rng(seed)
    hits, done = 1, 0  # the observed pattern
    while done < resamples:
        size = min(MC_CHUNK, resamples - done)
        signs = rng.choice([-1.0, 1.0], size=(size, n))  # (size, n)
        hits += int(np.sum(np.abs(signs @ d / n) >= threshold))
        done += size
    return hits / (resamples + 1)


def holm(p_values) -> np.ndarray:
    """Holm's (1979, Scand. J. Statist. 6:65) step-down adjusted p-values, in the input order.

    The i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; NaN
    entries stay NaN and do not count in m. Compare the result with the family's alpha.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"'p_values' should be a 1d sequence but got shape {p.shape}")
    out = np.full_like(p, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]  # (m,)
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def tost(diffs, margin: float = EQUIVALENCE_MARGIN) -> float:
    """p-value of equivalence within +-``margin``: two one-sided t-tests (Schuirmann 1987,
    J. Pharmacokinet. Biopharm. 15:657), the larger of the two one-sided p-values.

    Only p < 0.05 supports saying a method "matches" or "reaches" its reference; a large p says
    nothing either way. NaN for fewer than two values.
    """
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan
    mean, se = d.mean(), d.std(ddof=1) / math.sqrt(n)
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    p_above = scipy_stats.t.sf((mean + margin) / se, n - 1)  # H0: mean <= -margin
    p_below = scipy_stats.t.cdf((mean - margin) / se, n - 1)  # H0: mean >= +margin
    return float(max(p_above, p_below))


def interval_bounds(samples, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The ``level`` interval of the mean along the last axis of ``samples`` (seeds last, any
    leading axes): the Student t-interval at the stricter nominal level ``1 - (1 - level) / 2``,
    so that it covers skewed differences too (coverages in the module docstring). NaN bounds for
    fewer than two values."""
    x = np.asarray(samples, dtype=float)
    n = x.shape[-1]
    if n < 2:
        nan = np.full(x.shape[:-1], math.nan)
        return nan, nan.copy()
    mean, sd = x.mean(axis=-1), x.std(axis=-1, ddof=1)  # (...,)
    half = scipy_stats.t.ppf(1 - (1 - level) / 4, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def interval(diffs, level: float = LEVEL) -> tuple[float, float, str]:
    """The ``level`` interval of the mean of ``diffs`` (see :func:`interval_bounds`) and how it
    was made: :data:`CI_METHOD`, or ``none`` below two values (NaN bounds)."""
    if len(diffs) < 2:
        return math.nan, math.nan, "none"
    low, high = interval_bounds(diffs, level)
    return float(low), float(high), CI_METHOD


def minimum_detectable_effect(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean difference that the paired test at level ``alpha`` (two-sided;
    pass the Holm-corrected level, e.g. ``0.05 / m`` for m comparisons) detects with ``power``,
    for seed-to-seed differences of standard deviation ``sd`` over ``n`` seeds:
    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (the t-test's; the sign-flip test's
    power approaches it, Lehmann & Romano 2005, sec. 15.2). Infinite where the sign-flip test can
    never reach ``alpha`` (``2 / 2**n > alpha``) or ``n < 2``."""
    if n < 2 or 2.0 / 2**n > alpha:
        return math.inf
    t = scipy_stats.t.ppf(1 - alpha / 2, n - 1) + scipy_stats.t.ppf(power, n - 1)
    return float(t * sd / math.sqrt(n))


@dataclass(frozen=True)
class PairedDelta:
    """A paired difference over the common seeds: its mean ``delta``, its interval (``low``,
    ``high``; NaN below two pairs) made by ``ci``, the number of ``pairs``, the sign-flip
    ``p_value``, the Holm-adjusted ``p_holm`` of its family (NaN until :func:`family` or
    :meth:`with_holm` sets it) and the equivalence p-value ``p_tost`` at
    :data:`EQUIVALENCE_MARGIN`. ``significant`` is read from the p-values, never the interval."""

    delta: float
    low: float
    high: float
    pairs: int
    ci: str
    p_value: float = math.nan
    p_holm: float = math.nan
    p_tost: float = math.nan

    @property
    def significant(self) -> bool:
        """``p_holm < 0.05`` once the family is known, else ``p_value < 0.05`` (False for NaN)."""
        p = self.p_value if math.isnan(self.p_holm) else self.p_holm
        return bool(p < ALPHA)

    def with_holm(self, p_holm: float) -> PairedDelta:
        """This difference with its family's Holm-adjusted p-value."""
        return dataclasses.replace(self, p_holm=float(p_holm))

    @classmethod
    def none(cls) -> PairedDelta:
        """No pairs (no reference to compare with)."""
        return cls(math.nan, math.nan, math.nan, 0, "none")


def paired_delta(values: dict[int, float], reference: dict[int, float]) -> PairedDelta:
    """``values - reference`` on their common seeds (``{seed: metric}`` each, in any order);
    seeds in only one of them are left out."""
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds]
    low, high, how = interval(diffs)
    return PairedDelta(
        delta=float(np.mean(diffs)) if diffs else math.nan,
        low=low,
        high=high,
        pairs=len(diffs),
        ci=how,
        p_value=sign_flip_p(diffs),
        p_tost=tost(diffs),
    )


def family(deltas: list[PairedDelta]) -> list[PairedDelta]:
    """``deltas`` with the Holm adjustment over them as one family (those without a p-value are
    left out of it and keep a NaN ``p_holm``)."""
    adjusted = holm([d.p_value for d in deltas])
    return [d.with_holm(p) for d, p in zip(deltas, adjusted, strict=True)]


def beats(delta: PairedDelta) -> bool:
    """Significantly better than the reference: significant and a positive difference (a
    significantly *worse* method is significant too, with a negative ``delta``)."""
    return delta.significant and delta.delta > 0
