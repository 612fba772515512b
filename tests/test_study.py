"""The study: end to end through the Hydra app, resuming, failed trials, and bad input."""

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import open_dict
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffsort_reorder.backbones import list_backbones
from diffsort_reorder.config import compose_config
from diffsort_reorder.run.result import RunResult
from diffsort_reorder.run.rundir import RunDir
from diffsort_reorder.study import search as search_module
from diffsort_reorder.study import space as space_module
from diffsort_reorder.study import study as study_module
from diffsort_reorder.study.report import SEED_COLUMNS
from diffsort_reorder.study.study import Study, StudyStopped

ROOT = Path(__file__).resolve().parent.parent
NO_PRUNING = "study.pruner.name=none"


def study_config(tmp_path, *overrides, space=None):
    cfg = compose_config(
        ["study=smoke", f"study.output_dir={tmp_path}", "study.progress=false", *overrides],
        config_name="study",
    )
    if space is not None:
        with open_dict(cfg):
            cfg.space.update(space)
    return cfg


def trials(tmp_path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def read_results(tmp_path) -> dict[str, dict]:
    with open(tmp_path / "results.csv") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def forbid_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("bad input should be refused before any training")

    monkeypatch.setattr(study_module, "train", no_training)


def rows_by_key(path) -> dict[tuple[str, str, str], dict]:
    with open(path / "results.csv") as f:
        return {(r["protocol"], r["backbone"], r["method"]): r for r in csv.DictReader(f)}


def read_seed_lines(path) -> list[dict]:
    with open(path / "results_by_seed.csv") as f:
        return list(csv.DictReader(f))


def test_smoke_study_end_to_end(tmp_path):
    """The acceptance command through the Hydra app: trials in the DB, hparams in TensorBoard, a
    row per (method, backbone) with paired deltas inside their intervals and significance read
    from the Holm-adjusted p, the report's path last."""
    out = tmp_path / "smoke"
    proc = subprocess.run(
        [sys.executable, "-m", "diffsort_reorder.study", "study=smoke", "study.protocol=retrain",
         "study.backbones=[txl,vit]", f"study.output_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "report.md")
    cfg = study_config(out)
    rows = rows_by_key(out)
    methods = [*cfg.study.methods, "oracle"]  # study.oracle adds the reference row
    assert cfg.study.oracle
    assert list(rows) == [("retrain", b, m) for b in ("txl", "vit") for m in methods]
    with open(out / "results.csv") as f:
        header = next(csv.reader(f))
    assert {"protocol", "reported", "test_acc_mean", "test_acc_std", "val_acc_mean",
            "delta_vs_row_major", "row_major_ci_low", "row_major_ci_high", "p_holm_vs_row_major",
            "significant_vs_row_major", "best_fixed", "delta_vs_best_fixed", "ci_low", "ci_high",
            "p_value", "p_holm", "significant", "success_rate", "gap_to_oracle",
            "key_recall"} <= set(header)  # fmt: skip
    for (_, backbone, method), row in rows.items():
        assert int(row["n_seeds"]) == cfg.study.seeds and row["seeds"] == "1 2"  # paired seeds
        assert row["reported"] == "test_acc" and 0.0 <= float(row["test_acc_mean"]) <= 1.0
        assert 0.0 <= float(row["val_acc_mean"]) <= 1.0
        assert row["backbone"] == backbone and row["data"] == "planted"
        assert 0.0 <= float(row["key_recall"]) <= 1.0
        assert row["best_fixed"] in ("row_major", "hilbert", "compression_prior")
        for prefix, low, high, p, significant in (
            ("delta_vs_row_major", "row_major_ci_low", "row_major_ci_high",
             "p_holm_vs_row_major", "significant_vs_row_major"),
            ("delta_vs_best_fixed", "ci_low", "ci_high", "p_holm", "significant"),
        ):  # fmt: skip
            if row[prefix] == "nan":  # row_major against itself, the fixed against the best
                assert row[significant] == "False"
                continue
            assert float(row[low]) <= float(row[prefix]) <= float(row[high])
            assert row[significant] == str(float(row[p]) < 0.05) == "False"  # 2 seeds: p >= 0.5
        assert (row["delta_vs_best_fixed"] == "nan") == (
            method not in ("softsort", "plackett_luce")
        )
    # vit reads all patches with attention and patch position embeddings: order-invariant.
    # (the same up to float summation order: at most one test image apart per seed)
    num_test = compose_config(list(cfg.study.overrides)).data.options.num_test
    base = [float(v) for v in rows["retrain", "vit", "row_major"]["test_accs"].split()]
    for method in methods:
        accs = [float(v) for v in rows["retrain", "vit", method]["test_accs"].split()]
        assert all(abs(a - b) <= 1 / num_test + 1e-9 for a, b in zip(accs, base, strict=True))
    for method in ("softsort", "plackett_luce"):
        found = trials(out, f"smoke/txl/{method}")
        assert len(found) == cfg.study.n_trials
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in found)
        assert rows["retrain", "txl", method]["best_params"].startswith('{"estimator.')
        for t in found:  # each trial is a TensorBoard run; the finished ones carry hparams
            events = EventAccumulator(
                str(out / "runs" / "smoke" / "txl" / method / f"trial-{t.number:04d}")
            )
            events.Reload()
            assert "val/acc" in events.Tags()["scalars"]
            if t.state == TrialState.COMPLETE:
                assert events.PluginTagToContent("hparams")
    events = EventAccumulator(str(out / "runs" / "smoke" / "vit" / "row_major" / "seed-1"))
    events.Reload()
    assert events.PluginTagToContent("hparams")
    report = (out / "report.md").read_text()
    assert "| softsort | learned |" in report and "tensorboard --logdir" in report
    assert "## Method x backbone (retrain)" in report
    for name in ("comparison.png", "orders-txl.png", "backbones-retrain.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # The maps' marks: each backbone's readout window (txl: its last segment and memory; vit:
    # none) and each run's key patches, from the runs' own configs.
    with open(out / "results_by_seed.csv") as f:
        lines = list(csv.DictReader(f))
    data = compose_config(list(cfg.study.overrides)).data.options
    side, keys = data.grid_size, data.num_keys
    # txl: its last segment of 4 and the memory of 4 it attends (smoke's backbone_overrides).
    assert {line["backbone"]: line["readout_window"] for line in lines} == {"txl": "8", "vit": ""}
    assert all(line["grid"] == f"{side}x{side}" for line in lines)
    assert all(len(line["key_patches"].split()) == keys for line in lines)


def test_retrain_trains_each_seed_on_the_order_that_seed_learned(tmp_path):
    """Both protocols, the whole pipeline per seed: each curriculum seed learns its own order,
    and that seed's retrain run trains a fresh model on it (not on the search's best order).
    Fixed orders run once for both. results_by_seed.csv has one line per seed run."""
    cfg = study_config(tmp_path, "study.methods=[row_major,softsort]", "study.oracle=false",
                       "study.protocol=[curriculum,retrain]", "study.n_trials=2",
                       NO_PRUNING)  # fmt: skip
    report = Study(cfg).run()
    rows = rows_by_key(tmp_path)
    assert set(rows) == {(p, "txl", m) for p in ("curriculum", "retrain")
                         for m in ("row_major", "softsort")}  # fmt: skip
    assert (
        rows["curriculum", "txl", "row_major"]["test_accs"]
        == rows["retrain", "txl", "row_major"]["test_accs"]
    )
    with open(tmp_path / "results_by_seed.csv") as f:
        assert tuple(next(csv.reader(f))) == SEED_COLUMNS
    lines = read_seed_lines(tmp_path)
    keys = [(r["protocol"], r["backbone"], r["method"], r["seed"]) for r in lines]
    assert sorted(keys) == sorted(
        (p, "txl", m, s)
        for p in ("curriculum", "retrain")
        for m in ("row_major", "softsort")
        for s in ("1", "2")
    )
    line = {(r["protocol"], r["method"], int(r["seed"])): r for r in lines}
    orders = {}
    for seed in (1, 2):
        learned = line["curriculum", "softsort", seed]["order"]
        retrain = line["retrain", "softsort", seed]
        assert sorted(map(int, learned.split())) == list(range(16))
        assert retrain["order"] == learned  # its own seed's order
        assert retrain["order_source"] == f"txl/softsort/seed-{seed}"
        assert line["curriculum", "softsort", seed]["order_source"] == f"txl/softsort/seed-{seed}"
        assert line["retrain", "softsort", seed]["task_seed"] == str(seed - 1)  # [0, 1] in turn
        run_dir = tmp_path / "train" / "txl" / "softsort" / f"retrain-seed-{seed}"
        order = [int(v) for v in learned.split()]
        assert f"order:\n- {order[0]}\n" in (run_dir / "config.yaml").read_text()
        result = json.loads((run_dir / "result.json").read_text())
        assert result["order"] == order and result["finished"] and result["seed"] == seed
        orders[seed] = order
    # Each seed keeps its own order, whether or not the two seeds learned the same one.
    assert [line["retrain", "softsort", s]["order"] for s in (1, 2)] == [
        " ".join(map(str, orders[s])) for s in (1, 2)
    ]
    assert "keep the curriculum under retrain" not in report.read_text()  # no per-image method


def test_interrupted_study_continues_where_it_stopped(tmp_path):
    methods = "study.methods=[row_major,softsort]"
    with pytest.raises(StudyStopped):
        Study(study_config(tmp_path, methods, "study.stop_after_runs=2", NO_PRUNING)).run()
    first = trials(tmp_path, "smoke/txl/softsort")
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    Study(study_config(tmp_path, methods, NO_PRUNING)).run()
    second = trials(tmp_path, "smoke/txl/softsort")
    assert len(second) == 3  # one more trial, not three more
    assert [t.params for t in second[:2]] == [t.params for t in first]
    assert [t.value for t in second[:2]] == [t.value for t in first]
    assert set(read_results(tmp_path)) == {"row_major", "softsort", "oracle"}


def test_trial_interrupted_mid_run_is_retried_from_its_checkpoint(tmp_path, monkeypatch):
    methods = "study.methods=[softsort]"
    real_train = study_module.train
    epochs_run = []

    def interrupted_train(cfg, on_epoch=None):
        def report(epoch, metrics):
            epochs_run.append((Path(cfg.output_dir).name, epoch))
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if Path(cfg.output_dir).name == "trial-0001" and epoch == 2:
                raise KeyboardInterrupt  # Ctrl-C after the checkpoint of epoch 2

        return real_train(cfg, on_epoch=report)

    monkeypatch.setattr(study_module, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        Study(study_config(tmp_path, methods, NO_PRUNING)).run()
    assert [t.state for t in trials(tmp_path, "smoke/txl/softsort")] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
    ]
    epochs_run.clear()
    Study(study_config(tmp_path, methods, "study.pruner.name=none")).run()
    found = trials(tmp_path, "smoke/txl/softsort")
    retry = found[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.state == TrialState.COMPLETE
    assert retry.params == found[1].params
    assert len(found) == 4  # the interrupted trial does not use up the budget of 3
    assert ("trial-0001", 3) in epochs_run and ("trial-0001", 1) not in epochs_run  # resumed
    assert read_results(tmp_path)["softsort"]["trials_failed"] == "0"  # it was run again


def test_nan_trial_ends_fail_and_the_study_completes(tmp_path):
    space = {"softsort": {"trainer.lr": {"type": "float", "low": 1e30, "high": 1e31, "log": True}}}
    cfg = study_config(tmp_path, "study.methods=[row_major,softsort]", space=space)
    report = Study(cfg).run()
    found = trials(tmp_path, "smoke/txl/softsort")
    assert len(found) == cfg.study.n_trials
    for t in found:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["fail_reason"].startswith("FloatingPointError: non-finite")
    results = read_results(tmp_path)
    assert int(results["softsort"]["n_seeds"]) == 0 and results["softsort"]["trials_failed"] == "3"
    assert int(results["row_major"]["n_seeds"]) == cfg.study.seeds
    assert "FloatingPointError" in report.read_text()


def test_seed_runs_are_reused_when_rerun(tmp_path, monkeypatch):
    cfg = study_config(tmp_path, "study.methods=[row_major]")
    Study(cfg).run()
    before = read_results(tmp_path)
    forbid_training(monkeypatch)
    Study(cfg).run()  # everything is done: nothing trains again
    assert read_results(tmp_path) == before


@pytest.mark.parametrize(
    ("overrides", "space", "message"),
    [
        (["study.methods=[row_major,nosuch]"], None, "unknown method 'nosuch'"),
        (["study.methods=[oracle]"], None, "oracle"),
        (["study.methods=[]"], None, "'study.methods' is empty"),
        (["study.storage=sqlite:////no/such/dir/study.db"], None, "'study.storage'"),
        (["study.storage=nosuchdialect://x"], None, "'study.storage'"),
        (["study.n_trials=0"], None, "'study.n_trials'"),
        (["study.pruner.name=nosuch"], None, "'study.pruner.name'"),
        (["study.metric=loss"], None, "'study.metric'"),
        (["+study.method_overrides.nosuch=['seed=1']"], None, "'study.method_overrides'"),
        ([], {"softsort": {"estimator.lr": {"type": "float", "low": 0.1, "high": 0.1}}},
         "empty range"),
        ([], {"softsort": {"estimator.init": {"type": "categorical", "choices": []}}},
         "no choices"),
        ([], {"softsort": {"estimator.init": {"type": "categorical", "choices": ["oracle"]}}},
         "oracle"),
        ([], {"softsort": {"estimator.init": {"type": "categorical", "choices": ["hilbert",
                                                                                "nosuch"]}}},
         "an estimator starts from one of"),
        ([], {"softsort": {"estimator.nosuch": {"type": "float", "low": 0.1, "high": 1.0}}},
         "'space.softsort'"),
        ([], {"softsort": {"estimator.lr": {"type": "uniform", "low": 0.1, "high": 1.0}}},
         "type one of"),
        ([], {"softsort": {}}, "no search space"),
        (["study.overrides=['data=nosuch']"], None, "'study.overrides'"),
        (["study.overrides=['data=planted','estimator.init=oracle']",
          "study.methods=[softsort]"], {"softsort": {"estimator.lr": {"type": "float", "low": 0.1,
                                                                       "high": 1.0}}}, "oracle"),
        (["study.protocol=finetune"], None,
         "'study.protocol' should be one of ('curriculum', 'retrain') (or a list of them, each "
         "once) but got 'finetune'"),
        (["study.protocol=[retrain,retrain]"], None, "'study.protocol' should be one of"),
        (["study.task_seeds=[0,0]"], None, "'study.task_seeds' should be null or a list of "
         "distinct ints (planted key placements) but got [0, 0]"),
        (["study.task_seeds=[a]"], None, "'study.task_seeds' should be null or a list of "
         "distinct ints"),
        (["study.task_seeds=[]"], None, "'study.task_seeds' should be null or a list"),
        (["study.oracle=2"], None, "'study.oracle' should be true or false but got 2"),
        (["study.backbones=[txl,rnn]"], None, "'study.backbones' should list distinct backbones "
         f"out of {list_backbones()} (or be null) but names unknown ['rnn']"),
        (["study.backbones=[txl,vit,txl]"], None, "'study.backbones' should list distinct "
         f"backbones out of {list_backbones()} (or be null) but names ['txl'] twice"),
        (["+study.backbone_overrides.rnn=[]"], None, "'study.backbone_overrides' names unknown"),
        (["study.methods=[row_major,plackett_luce_rloo]",
          "+study.method_overrides.plackett_luce_rloo=['estimator.options.num_samples=1']"],
         {"plackett_luce_rloo": {"estimator.lr": {"type": "float", "low": 0.1, "high": 1.0}}},
         "'num_samples' should be >= 2 with baseline='rloo'"),
        (["study.methods=[row_major,plackett_luce_rloo]"],
         {"plackett_luce_rloo": {"estimator.options.num_samples": {"type": "categorical",
                                                                   "choices": [4, 1]}}},
         "'space.plackett_luce_rloo.estimator.options.num_samples' offers 1: 'num_samples' "
         "should be >= 2 with baseline='rloo'"),
        (["study.methods=[row_major,plackett_luce]",
          "+study.method_overrides.plackett_luce=['estimator.grad_clip=-1']"], None,
         "'estimator.grad_clip' should be a number > 0 or null (no clip) but got -1"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_before_training(tmp_path, monkeypatch, overrides, space, message):
    forbid_training(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(message)):
        Study(study_config(tmp_path, *overrides, space=space)).run()


def test_cli_reports_bad_input_without_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "diffsort_reorder.study", "study=smoke",
         f"study.output_dir={tmp_path}", "study.methods=[row_major,nosuch]"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "unknown method 'nosuch'" in proc.stderr
    assert not (tmp_path / "train").exists()


def test_a_journal_file_holds_the_study(tmp_path):
    journal = tmp_path / "journal.log"
    cfg = study_config(tmp_path, "study.methods=[softsort]", f"study.storage={journal}")
    Study(cfg).run()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    found = optuna.load_study(study_name="smoke/txl/softsort", storage=storage).get_trials()
    assert len(found) == cfg.study.n_trials
    assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize(
    "name", ["default", "digits", "digits_long", "backbones", "cifar10_gpu", "imagefolder_gpu"]
)
def test_every_study_file_composes_its_runs(tmp_path, monkeypatch, name):
    """Each study's run configs compose and its estimators start from a scan order or a prior
    (the GPU studies are given a data folder; nothing trains)."""
    forbid_training(monkeypatch)
    if name.endswith("_gpu"):  # a study checks that its data folder holds the data, first
        for batch in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            (tmp_path / batch).touch()  # CIFAR-10's files
        for split in ("train", "val"):
            (tmp_path / split).mkdir()  # an image folder's
    cfg = compose_config(
        [f"study={name}", f"study.output_dir={tmp_path}", f"study.data_root={tmp_path}"]
        if name.endswith("_gpu")
        else [f"study={name}", f"study.output_dir={tmp_path}"],
        config_name="study",
    )
    study = Study(cfg)
    assert set(study.methods) >= {"row_major", "softsort"}
    run = study.run_config("softsort", study.backbones[0], 1, "seed-1", {})
    assert run.estimator.init != "oracle" and run.trainer.log_dir.endswith("softsort/seed-1")


@pytest.mark.parametrize(
    ("overrides", "sampler", "pruner", "searched"),
    [
        ([], optuna.samplers.TPESampler, optuna.pruners.MedianPruner, {"softsort",
                                                                       "plackett_luce"}),
        (["study.sampler.name=random"], optuna.samplers.RandomSampler,
         optuna.pruners.MedianPruner, {"softsort", "plackett_luce"}),
        (["study.pruner.name=hyperband"], optuna.samplers.TPESampler,
         optuna.pruners.HyperbandPruner, {"softsort", "plackett_luce"}),
        (["study.pruner.name=none"], optuna.samplers.TPESampler, optuna.pruners.NopPruner,
         {"softsort", "plackett_luce"}),
        (["study.methods=[saliency_gradient,softsort]"], optuna.samplers.TPESampler,
         optuna.pruners.MedianPruner, {"softsort"}),
    ],
)  # fmt: skip
def test_samplers_pruners_and_training_free_methods_switch_with_one_override(
    tmp_path, monkeypatch, overrides, sampler, pruner, searched
):
    """One override switches the sampler or the pruner (options the new class does not take are
    dropped), and a training-free method is run, not searched."""
    forbid_training(monkeypatch)
    study = Study(study_config(tmp_path, *overrides))
    assert set(study.spaces) == searched
    built = study.optuna_study("softsort", "txl")
    assert type(built.sampler) is sampler and type(built.pruner) is pruner
    assert type(space_module.build_sampler(study.s.sampler, 0)) is sampler
    assert type(space_module.build_pruner(study.s.pruner)) is pruner


def fake_train(calls: list):
    """A stand-in for ``train`` that records each run config and writes and returns a finished
    run's result (the keys the study and the report read), with an accuracy that tells seeds
    apart."""

    def record(cfg, on_epoch=None):
        calls.append(cfg)
        grid = [4, 4]
        result = RunResult(
            val_acc=0.5 + cfg.seed / 100, best_val_acc=0.6 + cfg.seed / 100,
            val_loss=1.0, test_acc=0.7 + cfg.seed / 100, train_seconds=0.1, key_recall=None,
            key_patches=None,
            steps=1, epochs=cfg.trainer.epochs, finished=True, method=cfg.method,
            backbone=cfg.backbone.name, data=cfg.data.name, seed=cfg.seed, grid=grid,
            order=list(range(grid[0] * grid[1])), example_order=None,
            output_dir=cfg.output_dir,
        )  # fmt: skip
        RunDir(cfg.output_dir).write_result(result)
        return result

    return record


def test_a_failed_seed_run_is_recorded_and_final(tmp_path, monkeypatch):
    """A seed run that goes non-finite is recorded as failed in the storage: the report lists
    it, and a re-run of the command reads it rather than training it again (as a trial that
    failed with a reason)."""
    calls = []
    record = fake_train(calls)

    def nan_on_seed_2(cfg, on_epoch=None):
        if cfg.seed == 2:
            raise FloatingPointError("non-finite loss nan at epoch 0, step 1")
        return record(cfg, on_epoch)

    monkeypatch.setattr(study_module, "train", nan_on_seed_2)
    cfg = study_config(tmp_path, "study.methods=[row_major]")
    report = Study(cfg).run().read_text()
    assert "`row_major` (txl, curriculum) seed 2: FloatingPointError: non-finite loss" in report
    assert read_results(tmp_path)["row_major"]["n_seeds"] == "1"
    forbid_training(monkeypatch)
    assert Study(cfg).run().read_text() == report


def test_seed_runs_finished_by_an_older_version_are_reused_silently(tmp_path, monkeypatch,
                                                                      capsys):  # fmt: skip
    """A run that finished in its folder but is not in the storage (an older version of the
    suite, or an interruption before it was recorded) is recorded, not trained again, and not
    counted as a run of this invocation."""
    cfg = study_config(tmp_path, "study.methods=[row_major]")
    Study(cfg).run()
    before = read_results(tmp_path)
    optuna.delete_study(study_name="smoke/runs", storage=f"sqlite:///{tmp_path / 'study.db'}")
    forbid_training(monkeypatch)
    capsys.readouterr()
    Study(study_config(tmp_path, "study.methods=[row_major]", "study.stop_after_runs=1")).run()
    assert read_results(tmp_path) == before
    assert "seed-1" not in capsys.readouterr().err  # reused: no line, and stop_after_runs=1 holds


def test_a_study_refuses_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE is 2: start study workers without torchrun"):
        Study(study_config(tmp_path))


def test_seed_runs_use_their_own_seeds(tmp_path, monkeypatch):
    """The search trains on study.seed; every method's re-runs on study.seed + 1 .. + seeds,
    under both protocols (a fixed order's runs serve both), and each run's data and prior seeds
    follow its seed; the planted key placements (study.task_seeds) go to the seeds in turn, the
    search's seed taking the first."""
    calls = []
    monkeypatch.setattr(study_module, "train", fake_train(calls))
    cfg = study_config(tmp_path, "study.methods=[row_major,compression_prior,softsort]",
                       "study.protocol=[curriculum,retrain]", "study.seed=10", "study.seeds=3",
                       "study.n_trials=2", "study.task_seeds=[4,9]", "study.oracle=false",
                       NO_PRUNING)  # fmt: skip
    Study(cfg).run()
    runs = {}
    for run in calls:
        assert run.data.options.seed == run.seed  # the images follow the run's seed
        assert run.data.options.task_seed == {10: 4, 11: 4, 12: 9, 13: 4}[run.seed]
        if run.get("prior") is not None:
            assert run.prior.options.seed == run.seed
        runs.setdefault((run.method, Path(run.output_dir).name), []).append(run.seed)
    assert runs.pop(("softsort", "trial-0000")) == [10]
    assert runs.pop(("softsort", "trial-0001")) == [10]
    expected = {(m, f"seed-{s}"): [s] for m in ("row_major", "compression_prior", "softsort")
                for s in (11, 12, 13)}  # fmt: skip
    expected.update({("softsort", f"retrain-seed-{s}"): [s] for s in (11, 12, 13)})
    assert runs == expected
    rows = rows_by_key(tmp_path)
    assert len(rows) == 6
    for row in rows.values():
        assert row["seeds"] == "11 12 13" and row["n_seeds"] == "3"
        assert row["test_accs"] == "0.8100 0.8200 0.8300" and row["reported"] == "test_acc"
        assert row["val_acc_mean"] == "0.6200"  # the study metric (val_acc) on validation


def test_a_killed_workers_trial_is_failed_by_its_heartbeat_and_retried(tmp_path, monkeypatch):
    """A worker killed mid-trial leaves it RUNNING; once its heartbeat is stale, a re-run marks
    it FAIL and runs its parameters again (waiting for it first rather than counting it done)."""
    monkeypatch.setattr(search_module, "POLL_SECONDS", 0.5)
    cfg = study_config(tmp_path, "study.methods=[softsort]", "study.n_trials=1",
                       "study.start_from_defaults=false", "study.heartbeat_interval=1",
                       "study.grace_period=2")  # fmt: skip
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: ask() outside optimize()
        killed = Study(cfg).optuna_study("softsort", "txl").ask()  # RUNNING, as if its worker died
    killed.suggest_float("estimator.lr", 0.02, 0.5, log=True)
    study = Study(cfg)
    study.storage.record_heartbeat(killed._trial_id)
    study.storage.set_trial_system_attr(killed._trial_id, search_module.BEATING, True)
    started = time.monotonic()
    Study(cfg).run()
    assert time.monotonic() - started > 2  # it waited out the grace period
    found = trials(tmp_path, "smoke/txl/softsort")
    assert found[0].state == TrialState.FAIL and "fail_reason" not in found[0].user_attrs
    assert found[1].user_attrs["retry_of"] == 0 and found[1].state == TrialState.COMPLETE
    assert found[1].params["estimator.lr"] == found[0].params["estimator.lr"]
    assert read_results(tmp_path)["softsort"]["trials_failed"] == "0"


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path, monkeypatch):
    """Killed between taking its trial and the first beat, a worker leaves a RUNNING trial that
    Optuna would never fail (it has no heartbeat); once the grace period has passed, the next
    worker to take a trial fails it under the lock and runs it again."""

    class Clock:  # the study's clock: it waits, but not for ever
        perf_counter = staticmethod(time.perf_counter)
        slept = 0.0

        @classmethod
        def sleep(cls, seconds):
            cls.slept += seconds
            if cls.slept > 30:
                raise AssertionError("the worker waited 30 s for a trial with no worker")
            time.sleep(seconds)

    monkeypatch.setattr(search_module, "time", Clock)
    monkeypatch.setattr(search_module, "POLL_SECONDS", 0.5)
    cfg = study_config(tmp_path, "study.methods=[softsort]", "study.n_trials=1",
                       "study.start_from_defaults=false", "study.heartbeat_interval=1",
                       "study.grace_period=2")  # fmt: skip
    with pytest.warns(UserWarning, match="Heartbeat"):
        killed = Study(cfg).optuna_study("softsort", "txl").ask()  # RUNNING, never beat
    killed.suggest_float("estimator.lr", 0.02, 0.5, log=True)
    Study(cfg).run()
    assert Clock.slept <= 30  # not for ever (the grace period may pass in other work: seed runs)
    found = trials(tmp_path, "smoke/txl/softsort")
    waited = found[1].datetime_start - found[0].datetime_start
    assert waited.total_seconds() >= 2  # failed once the grace period had passed, not at once
    assert found[0].state == TrialState.FAIL and "fail_reason" not in found[0].user_attrs
    assert found[1].user_attrs["retry_of"] == 0 and found[1].state == TrialState.COMPLETE
    assert found[1].params["estimator.lr"] == found[0].params["estimator.lr"]
    assert found[1].system_attrs[search_module.BEATING] is True
