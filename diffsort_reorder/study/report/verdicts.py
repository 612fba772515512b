"""A panel's verdicts: within one (protocol, backbone) every method ran the same seeds, so each row
gets its paired differences, corrected for the panel's many comparisons.

Two families per panel, each corrected by Holm's step-down procedure
(:func:`diffsort_reorder.study.stats.family`):

- **the headline**: every learned method against the best fixed order (a scan order or a prior,
  picked by its mean *validation* accuracy and compared on the *test* split, so the pick does not
  favour it on the numbers it is judged by);
- **against row_major**: every other method (the oracle aside) against ``row_major``.

A learned row also gets its **success rate**, the share of seeds on which its own learned order
beat the best fixed order on test, and its **gap to the oracle** (planted data). Each family's
rows carry the minimum detectable effect of the family's corrected test.
"""

from __future__ import annotations

import math
import statistics

from ...orders.methods import is_fixed
from ..stats import PairedDelta, family, minimum_detectable_effect, paired_delta
from .rows import BASELINE, ORACLE, Row, groups, make_row

ALPHA = 0.05


def summarize(searches: dict, results: dict, metric: str, sources: dict | None = None) -> list[Row]:
    """One row per (protocol, backbone, method) of ``results``, with its panel's verdicts;
    ``searches`` holds each (backbone, method)'s Optuna study, ``sources`` each row's order
    sources (the run whose order each seed trained on)."""
    rows = [
        make_row(
            where, runs, searches.get((where[1], where[2])), metric, (sources or {}).get(where)
        )  # fmt: skip
        for where, runs in results.items()
    ]
    for panel in groups(rows).values():
        add_verdicts(panel)
    return rows


def best_fixed_row(panel: list[Row]) -> Row | None:
    """The fixed order (scan order or prior) with the best mean validation accuracy."""
    fixed = [r for r in panel if r.n_seeds and is_fixed(r.method)]
    return max(fixed, key=lambda r: statistics.fmean(r.val_by_seed.values())) if fixed else None


def add_verdicts(panel: list[Row]) -> None:
    """Set each row's paired statistics (see the module docstring)."""
    ok = [r for r in panel if r.n_seeds]
    base = next((r for r in ok if r.method == BASELINE), None)
    oracle = next((r for r in ok if r.method == ORACLE), None)
    best = best_fixed_row(panel)
    headline = [r for r in panel if r.kind == "learned"]
    others = [r for r in panel if r.method not in (BASELINE, ORACLE)]
    for row in panel:
        row.best_fixed = best.method if best else ""
        if oracle is not None and row.n_seeds:
            row.gap_to_oracle = paired_delta(row.by_seed, oracle.by_seed).delta
    if best is not None:
        set_family(headline, best, "vs_best_fixed")
        for row in headline:
            seeds = sorted(set(row.by_seed) & set(best.by_seed))
            wins = sum(row.by_seed[s] > best.by_seed[s] for s in seeds)
            row.success_rate = wins / len(seeds) if seeds else ""
            row.success_pairs = len(seeds)
    if base is not None:
        set_family(others, base, "vs_row_major")


def set_family(rows: list[Row], reference: Row, attribute: str) -> None:
    """Each of ``rows`` against ``reference``, Holm-corrected over ``rows``; the headline family
    (``vs_best_fixed``) also sets each row's minimum detectable effect at the family's level."""
    deltas = family([paired_delta(r.by_seed, reference.by_seed) for r in rows])
    size = sum(not math.isnan(d.p_value) for d in deltas)
    for row, delta in zip(rows, deltas, strict=True):
        setattr(row, attribute, delta)
        if attribute == "vs_best_fixed" and size:
            row.mde = detectable(row, reference, ALPHA / size)


def detectable(row: Row, reference: Row, alpha: float) -> float:
    """The minimum detectable effect of ``row`` against ``reference``: from the spread of their
    per-seed differences, at Holm's strictest level ``alpha`` (its first step)."""
    seeds = sorted(set(row.by_seed) & set(reference.by_seed))
    diffs = [row.by_seed[s] - reference.by_seed[s] for s in seeds]
    if len(diffs) < 2:
        return math.inf
    return minimum_detectable_effect(statistics.stdev(diffs), len(diffs), alpha)


__all__ = ["PairedDelta", "add_verdicts", "best_fixed_row", "summarize"]
