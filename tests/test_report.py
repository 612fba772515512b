"""The study report on hand-made run results (no training) that have no test split: each row
falls back to the study's validation metric (``reported``), with its mean and sample std over its
seeds, its paired differences, and the files it writes. Runs with a test split:
tests/test_verdicts.py."""

import csv
import json
import math
import statistics

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from diffsort_reorder.config import compose_config
from diffsort_reorder.run.result import RunResult
from diffsort_reorder.study.report import summarize, write_report
from diffsort_reorder.study.stats import paired_delta

TOL = 1e-12
# Per seed (val_acc, best_val_acc): the two metrics disagree on every mean and on which fixed
# order is best (row_major by val_acc, hilbert by best_val_acc).
RUNS = {
    "row_major": {1: (0.45, 0.50), 2: (0.55, 0.60), 3: (0.50, 0.70)},
    "hilbert": {3: (0.40, 0.80), 1: (0.40, 0.55), 2: (0.40, 0.60)},  # listed out of seed order
    "softsort": {1: (0.30, 0.70), 2: (0.31, 0.74), 3: (0.35, 0.78)},
    "diagonal": {1: (0.20, 0.30), 2: (0.25, 0.35)},  # seed 3 failed, below
}
FAILURE = "FloatingPointError: non-finite loss 1e+40 at epoch 0, step 3"


def run_result(tmp_path, method, seed, val_acc, best_val_acc) -> RunResult:
    """What ``train`` returns for a finished run."""
    out = tmp_path / "train" / "txl" / method / f"seed-{seed}"
    return RunResult(
        val_acc=val_acc, best_val_acc=best_val_acc, seed=seed, data="planted",
        key_recall=0.25 * seed, key_patches=[0, 5], train_seconds=2.0 * seed,
        grid=[4, 4], order=list(range(16))[::-1] if method == "softsort" else list(range(16)),
        example_order=None, output_dir=str(out), finished=True, code_version="abc1234",
        method=method, backbone="txl",
    )  # fmt: skip


def results(tmp_path) -> dict:
    out = {}
    for method, seeds in RUNS.items():
        runs = [run_result(tmp_path, method, s, *accs) for s, accs in seeds.items()]
        if method == "diagonal":
            runs.append(RunResult(seed=3, failed=FAILURE, wall_seconds=0.1))
        out["curriculum", "txl", method] = runs
    return out


def softsort_search() -> optuna.Study:
    """An in-memory search with two complete trials, a pruned one and a failed one."""
    study = optuna.create_study(direction="maximize")
    lr = {"estimator.lr": FloatDistribution(0.01, 1.0, log=True)}
    for value, state, attrs in (
        (0.7, TrialState.COMPLETE, {}),
        (0.8, TrialState.COMPLETE, {}),
        (None, TrialState.PRUNED, {}),
        (None, TrialState.FAIL, {"fail_reason": "FloatingPointError: x"}),
    ):
        params = {"estimator.lr": 0.1 * (len(study.trials) + 1)}
        study.add_trial(create_trial(state=state, value=value, params=params, distributions=lr,
                                     user_attrs=attrs))  # fmt: skip
    return study


def by_seed(method: str, metric: str) -> dict[int, float]:
    column = ("val_acc", "best_val_acc").index(metric)
    return {seed: accs[column] for seed, accs in RUNS[method].items()}


@pytest.mark.parametrize("metric", ["val_acc", "best_val_acc"])
def test_rows_summarize_the_study_metric_over_seeds(tmp_path, metric):
    rows = {r.method: r for r in summarize({}, results(tmp_path), metric)}
    assert list(rows) == list(RUNS)
    best_fixed = "row_major" if metric == "val_acc" else "hilbert"
    for method, row in rows.items():
        values = list(by_seed(method, metric).values())
        assert row.n_seeds == len(values) and row.reported == metric  # no test split: fallback
        for mean, std in ((row.test_acc_mean, row.test_acc_std),
                          (row.val_acc_mean, row.val_acc_std)):  # fmt: skip
            assert mean == pytest.approx(statistics.fmean(values), abs=TOL)
            assert std == pytest.approx(statistics.stdev(values), abs=TOL)  # ddof=1
        assert row.seeds == " ".join(map(str, RUNS[method]))
        assert row.test_accs == " ".join(f"{v:.4f}" for v in values)
        assert row.best_fixed == best_fixed
        # Families: learned rows against the best fixed order, all but row_major against it.
        learned = method == "softsort"  # diagonal is a scan order
        assert math.isnan(row.delta_vs_best_fixed) != learned
        assert math.isnan(row.delta_vs_row_major) == (method == "row_major")
        compared = [(row.vs_row_major, "row_major")] if method != "row_major" else []
        for got, ref in compared + ([(row.vs_best_fixed, best_fixed)] if learned else []):
            expected = paired_delta(by_seed(method, metric), by_seed(ref, metric))
            assert got.pairs == min(len(values), 3) and got.ci == expected.ci
            for key in ("delta", "low", "high", "p_value"):
                assert getattr(got, key) == pytest.approx(
                    getattr(expected, key), abs=TOL, nan_ok=True
                ), key
        assert row.delta_vs_row_major == pytest.approx(row.vs_row_major.delta, nan_ok=True)
        assert row.delta_vs_best_fixed == pytest.approx(row.vs_best_fixed.delta, nan_ok=True)
        assert row.significant == row.vs_best_fixed.significant
        assert row.significant_vs_row_major == row.vs_row_major.significant
    assert rows["diagonal"].failures == [("seed 3", FAILURE)]
    assert rows["softsort"].key_recall == pytest.approx(0.5)  # seeds 1, 2, 3: 0.25 * seed
    assert rows["softsort"].train_seconds == pytest.approx(4.0)


def test_best_val_acc_numbers_by_hand(tmp_path):
    """The same rows with numbers worked out by hand, so that none of them leans on the code
    under test or on the standard library's choice of ddof."""
    rows = {r.method: r for r in summarize({}, results(tmp_path), "best_val_acc")}
    soft = rows["softsort"]
    assert soft.test_acc_mean == pytest.approx(0.74, abs=TOL)
    assert soft.test_acc_std == pytest.approx(0.04, abs=TOL)  # sqrt((.04^2 + 0 + .04^2) / 2)
    assert rows["hilbert"].test_acc_std == pytest.approx(math.sqrt(0.0175), abs=TOL)
    assert rows["row_major"].test_acc_std == pytest.approx(0.1, abs=TOL)
    assert soft.delta_vs_row_major == pytest.approx(0.14, abs=TOL)  # (.2 + .14 + .08) / 3
    assert soft.delta_vs_best_fixed == pytest.approx(0.09, abs=TOL)  # (.15 + .14 - .02) / 3
    assert rows["diagonal"].n_seeds == 2
    assert rows["diagonal"].delta_vs_row_major == pytest.approx(-0.225, abs=TOL)
    assert math.isnan(rows["row_major"].delta_vs_row_major)  # not compared with itself


def test_write_report_writes_csv_markdown_and_figures(tmp_path):
    out = tmp_path / "study"
    cfg = compose_config(
        ["study=smoke", f"study.output_dir={out}", "study.metric=best_val_acc", "study.seeds=3",
         "study.methods=[row_major,hilbert,softsort,diagonal]"],
        config_name="study",
    )  # fmt: skip
    searches = {("txl", "softsort"): softsort_search()}
    path = write_report(out, cfg, searches, results(tmp_path))
    assert path == out / "report.md"
    with open(out / "results.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == list(RUNS)
    soft = rows["softsort"]
    assert (soft["protocol"], soft["backbone"], soft["data"]) == ("curriculum", "txl", "planted")
    assert (soft["test_acc_mean"], soft["test_acc_std"]) == ("0.7400", "0.0400")
    assert soft["n_seeds"] == "3"
    assert (soft["val_acc_mean"], soft["reported"]) == ("0.7400", "best_val_acc")
    assert (soft["delta_vs_row_major"], soft["best_fixed"]) == ("0.1400", "hilbert")
    assert soft["delta_vs_best_fixed"] == "0.0900" and soft["kind"] == "learned"
    expected = paired_delta(
        by_seed("softsort", "best_val_acc"), by_seed("row_major", "best_val_acc")
    )
    assert float(soft["row_major_ci_low"]) == pytest.approx(expected.low, abs=1e-4)
    assert float(soft["row_major_ci_high"]) == pytest.approx(expected.high, abs=1e-4)
    assert float(soft["p_value_vs_row_major"]) == pytest.approx(expected.p_value, abs=1e-4)
    assert soft["significant_vs_row_major"] == "False"  # p >= 0.25 at 3 seeds
    assert soft["significant"] == "False"
    assert json.loads(soft["best_params"]) == {"estimator.lr": pytest.approx(0.2)}
    assert (soft["trials_complete"], soft["trials_pruned"], soft["trials_failed"]) == (
        "2",
        "1",
        "1",
    )
    assert rows["diagonal"]["n_seeds"] == "2" and rows["row_major"]["trials_complete"] == "0"
    report = path.read_text()
    assert "test acc mean ± std" in report and "| softsort | learned | 0.740 ± 0.040 |" in report
    assert "| hilbert | scan | 0.650 ± 0.132 |" in report
    assert f"- `diagonal` (txl, curriculum) seed 3: {FAILURE}" in report
    assert "Code version: abc1234" in report and "replicated on seeds 1..3" in report
    assert "Training time: 0.7 min" in report  # 42 s of seed runs (the trials recorded none)
    for name in ("comparison.png", "orders.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "study.yaml").read_text().count("metric: best_val_acc") == 1
