"""A panel's verdicts on hand-made run results with a test split (no training): the best fixed
order picked on validation and judged on test, Holm over the headline family, success rates,
the gap to the oracle, and results_by_seed.csv."""

import csv
import math
import statistics

import pytest

from diffsort_reorder.config import compose_config
from diffsort_reorder.run.result import RunResult
from diffsort_reorder.study.report import SEED_COLUMNS, summarize, write_report
from diffsort_reorder.study.report.markdown import headline
from diffsort_reorder.study.seeds import task_seed_of
from diffsort_reorder.study.stats import beats, sign_flip_p

TOL = 1e-12
ALPHA = 0.05
LEARNED = ("softsort", "plackett_luce", "neuralsort")


def result(method: str, seed: int, test: float, val: float, order=None) -> RunResult:
    """A finished run with its test accuracy and its validation accuracy (the study metric)."""
    return RunResult(
        seed=seed, method=method, backbone="txl", data="planted", test_acc=test, val_acc=val,
        best_val_acc=val, train_seconds=1.0, grid=[2, 2], finished=True,
        order=order if order is not None else [0, 1, 2, 3],
    )  # fmt: skip


def panel(accs: dict[str, dict[int, tuple[float, float]]], protocol="curriculum") -> dict:
    """``results`` for :func:`summarize`: ``{method: {seed: (test, val)}}`` on one panel."""
    return {
        (protocol, "txl", method): [result(method, s, *acc) for s, acc in seeds.items()]
        for method, seeds in accs.items()
    }


def rows_of(accs) -> dict:
    return {r.method: r for r in summarize({}, panel(accs), "val_acc")}


def shifted(base: dict[int, tuple[float, float]], by: float) -> dict[int, tuple[float, float]]:
    """``base`` with ``by`` added to every seed's test accuracy (validation unchanged)."""
    return {s: (test + by, val) for s, (test, val) in base.items()}


def spread(seeds: int, start: float = 0.5) -> dict[int, tuple[float, float]]:
    """Test accuracies that differ from seed to seed (so differences have a spread)."""
    return {s: (start + 0.013 * s * s % 0.1, 0.5) for s in range(1, seeds + 1)}


def test_the_best_fixed_order_is_picked_on_validation_and_judged_on_test():
    """row_major is best on validation, hilbert on test, the oracle on both: row_major is the
    best fixed order, and the learned row's difference is read on test."""
    accs = {
        "row_major": {1: (0.50, 0.90), 2: (0.52, 0.92), 3: (0.54, 0.91)},
        "hilbert": {1: (0.80, 0.60), 2: (0.82, 0.61), 3: (0.84, 0.62)},
        "oracle": {1: (0.99, 0.99), 2: (0.99, 0.99), 3: (0.99, 0.99)},
        "softsort": {1: (0.60, 0.10), 2: (0.61, 0.11), 3: (0.65, 0.12)},
    }
    rows = rows_of(accs)
    assert {r.best_fixed for r in rows.values()} == {"row_major"}
    soft = rows["softsort"]
    assert soft.reported == "test_acc"
    assert soft.delta_vs_best_fixed == pytest.approx((0.10 + 0.09 + 0.11) / 3, abs=TOL)
    assert soft.test_acc_mean == pytest.approx(statistics.fmean([0.60, 0.61, 0.65]), abs=TOL)
    assert soft.val_acc_mean == pytest.approx(0.11, abs=TOL)
    assert soft.by_seed == {1: 0.60, 2: 0.61, 3: 0.65} and soft.val_by_seed[2] == 0.11
    assert "best fixed order (picked on validation) `row_major`, test 0.520." in headline(
        list(rows.values())
    )


@pytest.mark.parametrize(("n_learned", "significant"), [(1, True), (3, False)])
def test_holm_corrects_the_headline_family(n_learned, significant):
    """At 6 seeds a steady gain has p = 2/64 < 0.05 alone; over three learned methods Holm makes
    it 3 * 2/64 > 0.05, so no method is significant and the headline claims no win."""
    base = spread(6)
    accs = {"row_major": base, **{m: shifted(base, 0.05 + 0.01 * i)
                                  for i, m in enumerate(LEARNED[:n_learned])}}  # fmt: skip
    rows = rows_of(accs)
    text = headline(list(rows.values()))
    for method in LEARNED[:n_learned]:
        row = rows[method]
        assert row.p_value == pytest.approx(2 / 2**6, abs=TOL)
        assert row.p_holm == pytest.approx(n_learned * 2 / 2**6, abs=TOL)
        assert row.significant is significant and beats(row.vs_best_fixed) is significant
    assert ("Beat it (Holm-adjusted p < 0.05)" in text) is significant
    assert ("No learned order beats it after Holm's correction over 3 methods" in text) is (
        not significant
    )


def test_a_significantly_worse_learned_method_does_not_beat_the_best_fixed_order():
    """Over 8 seeds, softsort is steadily better and plackett_luce steadily worse: both are
    significant after Holm, but only softsort beats the best fixed order; the headline lists
    plackett_luce as worse."""
    base = spread(8)
    rows = rows_of({"row_major": base, "softsort": shifted(base, 0.05),
                    "plackett_luce": shifted(base, -0.05)})  # fmt: skip
    soft, pl = rows["softsort"], rows["plackett_luce"]
    assert soft.significant and pl.significant and pl.delta_vs_best_fixed < 0
    assert beats(soft.vs_best_fixed) and not beats(pl.vs_best_fixed)
    text = headline(list(rows.values()))
    after = text.partition("Beat it (Holm-adjusted p < 0.05):")[2]
    won, _, rest = after.partition("Worse than it:")
    assert "`softsort`" in won and "plackett_luce" not in won
    assert "`plackett_luce`" in rest.partition("Seeds whose")[0]


def test_success_rate_counts_test_wins_against_the_best_fixed_order_on_common_seeds():
    """softsort beats row_major on test on seeds 1 and 2 and loses on seed 3 (on validation it
    loses on all); seed 4 (row_major only) and seed 5 (softsort only) are not common seeds."""
    rows = rows_of({
        "row_major": {1: (0.50, 0.9), 2: (0.50, 0.9), 3: (0.50, 0.9), 4: (0.10, 0.9)},
        "softsort": {1: (0.60, 0.1), 2: (0.55, 0.1), 3: (0.40, 0.1), 5: (0.90, 0.1)},
    })  # fmt: skip
    assert rows["softsort"].success_rate == pytest.approx(2 / 3, abs=TOL)
    assert rows["softsort"].success_pairs == 3  # the seeds it shares with the best fixed order
    assert rows["row_major"].success_rate == ""  # fixed rows have none
    assert rows["softsort"].vs_best_fixed.pairs == 3
    from diffsort_reorder.study.report.markdown import markdown_table

    line = next(x for x in markdown_table(list(rows.values())).splitlines() if "softsort" in x)
    assert "| 2/3 |" in line  # wins over the common seeds, not over the row's own 4


def test_gap_to_oracle_is_the_mean_paired_difference_to_the_oracle_row():
    rows = rows_of({
        "row_major": {1: (0.50, 0.5), 2: (0.40, 0.5), 3: (0.45, 0.5)},
        "oracle": {1: (0.90, 0.9), 2: (0.80, 0.9), 3: (0.95, 0.9)},
        "softsort": {1: (0.70, 0.1), 2: (0.75, 0.1), 3: (0.60, 0.1)},
    })  # fmt: skip
    assert rows["softsort"].gap_to_oracle == pytest.approx((-0.2 - 0.05 - 0.35) / 3, abs=TOL)
    assert rows["row_major"].gap_to_oracle == pytest.approx((-0.4 - 0.4 - 0.5) / 3, abs=TOL)
    assert rows["oracle"].best_fixed == "row_major"  # a reference, never the best fixed order
    assert math.isnan(rows["oracle"].delta_vs_row_major)  # nor in the row_major family
    without = rows_of({"row_major": {1: (0.5, 0.5)}, "softsort": {1: (0.6, 0.1)}})
    assert math.isnan(without["softsort"].gap_to_oracle)


def test_a_zero_variance_difference_at_three_seeds_is_not_significant():
    """A steady +10 points at 3 seeds: the interval collapses onto the difference, but the
    sign-flip test cannot go below 2/8 = 0.25, so nothing is significant."""
    base = {1: (0.50, 0.5), 2: (0.60, 0.5), 3: (0.55, 0.5)}
    rows = rows_of({"row_major": base, "softsort": shifted(base, 0.1)})
    soft = rows["softsort"]
    assert soft.delta_vs_best_fixed == pytest.approx(0.1, abs=1e-9)
    assert soft.ci_low == pytest.approx(0.1, abs=1e-9)  # zero width: would pass an interval test
    assert soft.p_value == pytest.approx(sign_flip_p([0.1] * 3)) == pytest.approx(0.25)
    assert not soft.significant and not soft.significant_vs_row_major
    assert soft.mde == math.inf
    assert "cannot reach p < 0.05 at all" in headline(list(rows.values()))


def test_results_by_seed_has_one_line_per_seed_run(tmp_path):
    """results_by_seed.csv: the SEED_COLUMNS header, one line per (protocol, backbone, method,
    seed) with that run's test and validation accuracy, order, order source and task seed."""
    out = tmp_path / "study"
    cfg = compose_config(["study=smoke", f"study.output_dir={out}", "study.seeds=2",
                          "study.task_seeds=[5,7]"], config_name="study")  # fmt: skip
    orders = {1: [3, 2, 1, 0], 2: [1, 0, 3, 2]}
    results, sources = {}, {}
    for protocol in ("curriculum", "retrain"):
        for method in ("row_major", "softsort"):
            where = (protocol, "txl", method)
            results[where] = [
                result(method, s, 0.5 + s / 10 + (method == "softsort") / 100, 0.4 + s / 10,
                       orders[s] if method == "softsort" else None)
                for s in (1, 2)
            ]  # fmt: skip
            sources[where] = [f"txl/{method}/seed-{s}" for s in (1, 2)]
    write_report(out, cfg, {}, results, sources)
    with open(out / "results_by_seed.csv") as f:
        assert next(csv.reader(f)) == list(SEED_COLUMNS)
    with open(out / "results_by_seed.csv") as f:
        lines = list(csv.DictReader(f))
    keys = [(r["protocol"], r["backbone"], r["method"], r["seed"]) for r in lines]
    assert sorted(keys) == sorted((p, "txl", m, str(s)) for p in ("curriculum", "retrain")
                                  for m in ("row_major", "softsort") for s in (1, 2))  # fmt: skip
    line = {(r["protocol"], r["method"], r["seed"]): r for r in lines}
    soft = line["retrain", "softsort", "2"]
    assert (soft["test_acc"], soft["val_acc"]) == ("0.7100", "0.6000")
    assert soft["order"] == "1 0 3 2" and soft["order_source"] == "txl/softsort/seed-2"
    assert [line["curriculum", "row_major", s]["task_seed"] for s in "12"] == ["5", "7"]
    assert task_seed_of([5, 7], [1, 2, 3], 3) == 5  # in turn
    assert task_seed_of([5, 7], [1, 2, 3], 0) == 5  # the search's seed: the first
    assert task_seed_of(None, [1, 2], 1) is None
