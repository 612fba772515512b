"""The report's rows: one :class:`Row` per (protocol, backbone, method), made from the seed runs'
:class:`RunResult` s and the search's trials, with the paired statistics of its group."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from ...orders.methods import is_fixed, kind_of
from ...run.result import RunResult
from ..search import is_interrupted
from ..stats import PairedDelta, paired_delta

BASELINE = "row_major"
# results.csv: a Row's fields and properties, in this order.
COLUMNS = ("protocol", "method", "backbone", "data", "val_acc_mean", "val_acc_std", "n_seeds",
           "delta_vs_row_major", "delta_ci_low", "delta_ci_high", "significant", "best_fixed",
           "delta_vs_best_fixed", "best_fixed_ci_low", "best_fixed_ci_high",
           "significant_vs_best_fixed", "ci", "key_recall", "best_params", "train_seconds", "kind",
           "seeds", "val_accs", "trials_complete", "trials_pruned", "trials_failed")  # fmt: skip


@dataclass
class Row:
    """One method on one backbone under one protocol: its seeds' mean and std of the study's
    metric, its search's best params and trial counts, and (set per group by
    :func:`add_paired_stats`) its paired differences to ``row_major`` and to the best fixed
    order. ``runs`` are the finished seed runs, ``failures`` ``(where, why)`` pairs."""

    protocol: str
    method: str
    backbone: str
    data: str = ""
    val_acc_mean: float = math.nan
    val_acc_std: float = math.nan
    key_recall: float | str = ""  # "" where the data has no key patches
    best_params: str = "{}"
    train_seconds: float = math.nan
    kind: str = ""
    trials_complete: int = 0
    trials_pruned: int = 0
    trials_failed: int = 0
    runs: list[RunResult] = field(default_factory=list)
    by_seed: dict[int, float] = field(default_factory=dict)  # the metric per seed
    failures: list[tuple[str, str]] = field(default_factory=list)
    delta: PairedDelta = field(default_factory=PairedDelta.none)  # vs row_major
    vs_best_fixed: PairedDelta = field(default_factory=PairedDelta.none)
    best_fixed: str = ""  # the best fixed order of the group

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> str:
        return " ".join(str(r.seed) for r in self.runs)

    @property
    def val_accs(self) -> str:
        return " ".join(f"{v:.4f}" for v in self.by_seed.values())

    # The paired statistics as results.csv names them.
    delta_vs_row_major = property(lambda self: self.delta.delta)
    delta_ci_low = property(lambda self: self.delta.low)
    delta_ci_high = property(lambda self: self.delta.high)
    significant = property(lambda self: self.delta.significant)
    ci = property(lambda self: self.delta.ci)
    delta_vs_best_fixed = property(lambda self: self.vs_best_fixed.delta)
    best_fixed_ci_low = property(lambda self: self.vs_best_fixed.low)
    best_fixed_ci_high = property(lambda self: self.vs_best_fixed.high)
    significant_vs_best_fixed = property(lambda self: self.vs_best_fixed.significant)

    def csv_values(self) -> dict:
        """The row as results.csv writes it (floats to 4 decimals)."""
        values = {name: getattr(self, name) for name in COLUMNS}
        return {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in values.items()}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def best_trial(study: optuna.Study | None) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the highest value (None without a study or a complete trial)."""
    if study is None:
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def _was_retried(trial, trials) -> bool:
    """An interrupted trial (FAIL without a reason) that a later trial ran again."""
    if not is_interrupted(trial):
        return False
    root = trial.user_attrs.get("retry_of", trial.number)
    return any(t.number > trial.number and t.user_attrs.get("retry_of") == root for t in trials)


def make_row(where: tuple[str, str, str], results: list[RunResult], search, metric: str) -> Row:
    """The row of ``where`` = (protocol, backbone, method), before its group's statistics."""
    protocol, backbone, method = where
    runs = [r for r in results if r.ok]
    trials = search.get_trials(deepcopy=False) if search is not None else []
    best = best_trial(search)
    failed = [t for t in trials if t.state == TrialState.FAIL and not _was_retried(t, trials)]
    failures = [
        (f"trial {t.number}", t.user_attrs.get("fail_reason", "interrupted")) for t in failed
    ] + [(f"seed {r.seed}", r.failed) for r in results if not r.ok]
    recalls = [r.key_recall for r in runs if r.key_recall is not None]
    mean, std = mean_std([r.metric(metric) for r in runs])
    return Row(
        protocol, method, backbone,
        data=runs[0].data if runs else "",
        val_acc_mean=mean,
        val_acc_std=std,
        key_recall=statistics.fmean(recalls) if recalls else "",
        best_params=json.dumps(best.params if best else {}, sort_keys=True),
        train_seconds=mean_std([r.train_seconds for r in runs])[0],
        kind=kind_of(method),
        trials_complete=sum(t.state == TrialState.COMPLETE for t in trials),
        trials_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        trials_failed=len(failed),
        runs=runs,
        by_seed={r.seed: r.metric(metric) for r in runs},
        failures=failures,
    )  # fmt: skip


def summarize(searches: dict, results: dict, metric: str) -> list[Row]:
    """One row per (protocol, backbone, method) of ``results``, with its group's paired
    statistics; ``searches`` holds each (backbone, method)'s Optuna study."""
    rows = [
        make_row(where, runs, searches.get((where[1], where[2])), metric)
        for where, runs in results.items()
    ]
    for group in groups(rows).values():
        add_paired_stats(group)
    return rows


def groups(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows by (protocol, backbone), in study order."""
    out: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        out.setdefault((row.protocol, row.backbone), []).append(row)
    return out


def add_paired_stats(group: list[Row]) -> None:
    """Each row's paired difference to ``row_major`` and to the best fixed order of its group."""
    ok = [r for r in group if r.n_seeds]
    base = next((r for r in ok if r.method == BASELINE), None)
    fixed = [r for r in ok if is_fixed(r.method)]
    best_fixed = max(fixed, key=lambda r: r.val_acc_mean) if fixed else None
    for row in group:
        row.delta = paired_delta(row.by_seed, base.by_seed if base else {})
        row.vs_best_fixed = paired_delta(row.by_seed, best_fixed.by_seed if best_fixed else {})
        row.best_fixed = best_fixed.method if best_fixed else ""


def by_delta(rows: list[Row]) -> list[Row]:
    """``rows`` by their difference to row_major, lowest first (rows without one first)."""
    return sorted(rows, key=lambda r: -math.inf if math.isnan(r.delta_vs_row_major)
                  else r.delta_vs_row_major)  # fmt: skip


def csv_text(rows: list[Row]) -> str:
    """results.csv: a header of :data:`COLUMNS` and a line per row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.csv_values())
    return buffer.getvalue()
