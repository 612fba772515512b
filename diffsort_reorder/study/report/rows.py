"""The report's rows: one :class:`Row` per (protocol, backbone, method), made from the seed runs'
:class:`RunResult` s and the search's trials; :mod:`.verdicts` adds its panel's paired statistics.

A row reports the **test** split (read once per run, after its last epoch, by nothing that
selects); where a run has no test split (data without one) the row falls back to the study's
validation metric and says so in ``reported``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from ...orders.methods import kind_of
from ...run.result import RunResult
from ..search import is_interrupted
from ..stats import PairedDelta

BASELINE = "row_major"
ORACLE = "oracle"
CONVERGED = 0.05  # a Sinkhorn-based order's mean marginal error at its final tau, at most
# results.csv: a Row's fields and properties, in this order.
COLUMNS = ("protocol", "method", "backbone", "data", "kind", "n_seeds", "reported",
           "test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std",
           "best_fixed", "delta_vs_best_fixed", "ci_low", "ci_high", "p_value", "p_holm",
           "significant", "p_equivalent", "success_rate", "success_pairs", "mde",
           "delta_vs_row_major", "row_major_ci_low", "row_major_ci_high", "p_value_vs_row_major",
           "p_holm_vs_row_major", "significant_vs_row_major", "gap_to_oracle", "ci",
           "key_recall", "marginal_error", "converged", "best_params", "train_seconds",
           "trials_complete", "trials_pruned", "trials_failed", "seeds", "test_accs")  # fmt: skip
# results_by_seed.csv: one line per seed run, for researchers' own statistics.
# ``grid`` ("8x8"), ``key_patches`` (planted) and ``readout_window`` (how many last slots the
# backbone reads best; empty where it has no such window) are what the order maps draw.
SEED_COLUMNS = ("protocol", "backbone", "method", "seed", "task_seed", "test_acc", "val_acc",
                "key_recall", "marginal_error", "train_seconds", "order", "order_source",
                "grid", "key_patches", "readout_window")  # fmt: skip


@dataclass
class Row:
    """One method on one backbone under one protocol: its seeds' mean and std on the test split
    (and on validation), its search's best params and trial counts, and (set per panel by
    :func:`.verdicts.add_verdicts`) its paired differences to the best fixed order (picked on
    validation), to ``row_major`` and to the oracle. ``runs`` are the finished seed runs,
    ``failures`` ``(where, why)`` pairs: failed seed runs, failed trials (a run's own failure,
    or interrupted and never retried) and trials that never finished (RUNNING or WAITING)."""

    protocol: str
    method: str
    backbone: str
    data: str = ""
    reported: str = "test_acc"  # what by_seed holds: test_acc, or the study metric without one
    test_acc_mean: float = math.nan
    test_acc_std: float = math.nan
    val_acc_mean: float = math.nan
    val_acc_std: float = math.nan
    key_recall: float | str = ""  # "" where the data has no key patches
    marginal_error: float | str = ""  # "" for orderers without Sinkhorn iterations
    best_params: str = "{}"
    train_seconds: float = math.nan
    kind: str = ""
    trials_complete: int = 0
    trials_pruned: int = 0
    trials_failed: int = 0
    runs: list[RunResult] = field(default_factory=list)
    by_seed: dict[int, float] = field(default_factory=dict)  # the reported metric per seed
    val_by_seed: dict[int, float] = field(default_factory=dict)  # the study metric per seed
    failures: list[tuple[str, str]] = field(default_factory=list)
    order_sources: dict[int, str] = field(default_factory=dict)  # seed -> whose order it ran
    # Set by .verdicts per panel:
    best_fixed: str = ""
    vs_best_fixed: PairedDelta = field(default_factory=PairedDelta.none)
    vs_row_major: PairedDelta = field(default_factory=PairedDelta.none)
    gap_to_oracle: float = math.nan
    success_rate: float | str = ""  # learned rows: share of seeds beating the best fixed order
    success_pairs: int | str = ""  # the seeds it shares with the best fixed order
    mde: float = math.nan  # the smallest effect its family's corrected test detects (80%)

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> str:
        return " ".join(str(r.seed) for r in self.runs)

    @property
    def test_accs(self) -> str:
        return " ".join(f"{v:.4f}" for v in self.by_seed.values())

    @property
    def converged(self) -> bool | str:
        """Whether a Sinkhorn-based order ended within :data:`CONVERGED` ("" for others)."""
        return "" if self.marginal_error == "" else bool(self.marginal_error <= CONVERGED)

    # The paired statistics as results.csv names them.
    delta_vs_best_fixed = property(lambda self: self.vs_best_fixed.delta)
    ci_low = property(lambda self: self.vs_best_fixed.low)
    ci_high = property(lambda self: self.vs_best_fixed.high)
    p_value = property(lambda self: self.vs_best_fixed.p_value)
    p_holm = property(lambda self: self.vs_best_fixed.p_holm)
    significant = property(lambda self: self.vs_best_fixed.significant)
    p_equivalent = property(lambda self: self.vs_best_fixed.p_tost)
    ci = property(lambda self: self.vs_best_fixed.ci)
    delta_vs_row_major = property(lambda self: self.vs_row_major.delta)
    row_major_ci_low = property(lambda self: self.vs_row_major.low)
    row_major_ci_high = property(lambda self: self.vs_row_major.high)
    p_value_vs_row_major = property(lambda self: self.vs_row_major.p_value)
    p_holm_vs_row_major = property(lambda self: self.vs_row_major.p_holm)
    significant_vs_row_major = property(lambda self: self.vs_row_major.significant)

    def csv_values(self) -> dict:
        """The row as results.csv writes it (floats to 4 decimals)."""
        values = {name: getattr(self, name) for name in COLUMNS}
        return {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in values.items()}

    def seed_lines(self, task_seed_of, window: int | None = None) -> list[dict]:
        """Its lines of results_by_seed.csv; ``task_seed_of(seed)`` gives a seed's task,
        ``window`` is the backbone's readout window."""
        lines = []
        for run in self.runs:
            order = run.order if run.order is not None else run.example_order
            task = task_seed_of(run.seed)
            values = {
                "protocol": self.protocol, "backbone": self.backbone, "method": self.method,
                "seed": run.seed, "task_seed": "" if task is None else task,
                "test_acc": run.test_acc, "val_acc": run.val_acc, "key_recall": run.key_recall,
                "marginal_error": run.marginal_error, "train_seconds": run.train_seconds,
                "order": " ".join(map(str, order)) if order is not None else "",
                "order_source": self.order_sources.get(run.seed, ""),
                "grid": "x".join(map(str, run.grid)) if run.grid else "",
                "key_patches": " ".join(map(str, run.key_patches or [])),
                "readout_window": window,
            }  # fmt: skip
            lines.append({k: "" if v is None else f"{v:.4f}" if isinstance(v, float) else v
                          for k, v in values.items()})  # fmt: skip
        return lines


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


def _mean_of(values: list) -> float | str:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else ""


def make_row(where: tuple[str, str, str], results: list[RunResult], search, metric: str,
             sources: list[str] | None = None) -> Row:  # fmt: skip
    """The row of ``where`` = (protocol, backbone, method), before its panel's statistics;
    ``sources[i]`` is the run whose order ``results[i]`` trained on."""
    protocol, backbone, method = where
    runs = [r for r in results if r.ok]
    trials = search.get_trials(deepcopy=False) if search is not None else []
    best = best_trial(search)
    failed = [t for t in trials if t.state == TrialState.FAIL and not _was_retried(t, trials)]
    failures = [
        *((f"trial {t.number}", t.user_attrs.get("fail_reason", "interrupted (never retried)"))
          for t in failed),
        *((f"trial {t.number}", f"never finished ({t.state.name} when this report was written)")
          for t in trials if not t.state.is_finished()),
        *((f"seed {r.seed}", r.failed) for r in results if not r.ok),
    ]  # fmt: skip
    reported = "test_acc" if runs and all(r.test_acc is not None for r in runs) else metric
    test = mean_std([r.metric(reported) for r in runs])
    val = mean_std([r.metric(metric) for r in runs])
    return Row(
        protocol, method, backbone,
        data=runs[0].data if runs else "",
        reported=reported,
        test_acc_mean=test[0],
        test_acc_std=test[1],
        val_acc_mean=val[0],
        val_acc_std=val[1],
        key_recall=_mean_of([r.key_recall for r in runs]),
        marginal_error=_mean_of([r.marginal_error for r in runs]),
        best_params=json.dumps(best.params if best else {}, sort_keys=True),
        train_seconds=mean_std([r.train_seconds for r in runs])[0],
        kind=kind_of(method),
        trials_complete=sum(t.state == TrialState.COMPLETE for t in trials),
        trials_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        trials_failed=len(failed),
        runs=runs,
        by_seed={r.seed: r.metric(reported) for r in runs},
        val_by_seed={r.seed: r.metric(metric) for r in runs},
        failures=failures,
        order_sources={r.seed: s for r, s in zip(results, sources or [], strict=False)},
    )  # fmt: skip


def groups(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows by (protocol, backbone), in study order: a panel, whose methods ran the same seeds."""
    out: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        out.setdefault((row.protocol, row.backbone), []).append(row)
    return out


def _csv(columns, lines: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return buffer.getvalue()


def csv_text(rows: list[Row]) -> str:
    """results.csv: a header of :data:`COLUMNS` and a line per row."""
    return _csv(COLUMNS, [row.csv_values() for row in rows])


def seeds_csv_text(rows: list[Row], task_seed_of=lambda seed: None,
                   windows: dict | None = None) -> str:  # fmt: skip
    """results_by_seed.csv: a header of :data:`SEED_COLUMNS` and a line per seed run;
    ``windows`` maps a backbone to its readout window."""
    windows = windows or {}
    lines = [line for row in rows
             for line in row.seed_lines(task_seed_of, windows.get(row.backbone))]  # fmt: skip
    return _csv(SEED_COLUMNS, lines)
