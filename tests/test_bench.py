"""The benchmark runs and its target checks can fail (no timing is asserted here)."""

import json
from pathlib import Path

import pytest
import torch

from diffsort_reorder.bench.__main__ import main
from diffsort_reorder.bench.estimators import OTHERS, SINKHORNS, check_targets


def test_estimators_benchmark_runs_small(tmp_path, capsys):
    result = main(["estimators", "--device", "cpu", "--sizes", "2x8", "--repeats", "1",
                   "--out", str(tmp_path / "r.json")])  # fmt: skip
    names = {row["function"] for row in result["rows"]}
    assert names == set(SINKHORNS) | set(OTHERS)
    for row in result["rows"]:
        assert row["ms"] > 0 and (row["peak_mb"] is None or row["peak_mb"] >= 0)
        if "max_abs_diff_vs_pot" in row:
            assert row["max_abs_diff_vs_pot"] < 1e-5  # every Sinkhorn gives POT's plan
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == result["rows"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["benchmark"] == "estimators"


def test_target_checks_report_failures():
    def row(function, ms, peak, b=32, n=196, diff=None):
        return dict(function=function, B=b, N=n, ms=ms, peak_mb=peak, max_abs_diff_vs_pot=diff)

    rows = [
        row("sinkhorn (ours, unrolled)", 50.0, 10.0, diff=2e-5),
        row("ref: POT ot.sinkhorn, looped", 100.0, 10.0),
        row("sinkhorn (ours, implicit)", 1.0, 500.0, b=8, n=1024),
        row("ref: log-domain unrolled", 1.0, 1000.0, b=8, n=1024),
        row("gumbel_sinkhorn (estimator, tau 0.1)", 100.0, 1.0),
        row("gumbel_sinkhorn (estimator, tau 0.3)", 20.0, 1.0),
    ]
    assert [c["holds"] for c in check_targets(rows)] == [False, False, False, False]
    rows[0].update(ms=10.0, max_abs_diff_vs_pot=1e-7)
    rows[2].update(peak_mb=50.0)
    rows[4].update(ms=25.0)
    assert [c["holds"] for c in check_targets(rows)] == [True, True, True, True]


def test_long_benchmark_runs_small(capsys):
    from diffsort_reorder.bench.long import check_targets as long_targets

    result = main(["long", "--device", "cpu", "--sizes", "1x64,2x200", "--dim", "4",
                   "--repeats", "1"])  # fmt: skip
    functions = [(r["function"], r["B"], r["N"]) for r in result["rows"]]
    assert functions == [
        ("softsort_apply", 1, 64), ("dense softsort(s) @ x", 1, 64),
        ("softsort_apply", 2, 200), ("dense softsort(s) @ x", 2, 200),
        ("softsort estimator (train)", 8, 200),
    ]  # fmt: skip
    assert all(r["ms"] > 0 for r in result["rows"])
    assert result["checks"] == long_targets(result["rows"]) == []  # no target size in this run
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["benchmark"] == "long"


def test_long_benchmark_gpu_case_runs_small_on_the_cpu():
    import torch

    from diffsort_reorder.bench.long import shared_bf16_row

    row = shared_bf16_row(torch.device("cpu"), B=2, N=100, D=8, repeats=1)
    assert (
        row["ms"] > 0 and row["floor_ms"] is None and (row["B"], row["N"], row["D"]) == (2, 100, 8)
    )


def test_long_benchmark_targets_report_failures():
    from diffsort_reorder.bench.long import check_targets as long_targets

    def row(function, b, n, ms, peak):
        return dict(function=function, B=b, N=n, D=64, ms=ms, peak_mb=peak)

    rows = [
        row("softsort_apply", 1, 4096, 50.0, 10.0),
        row("dense softsort(s) @ x", 1, 4096, 100.0, 300.0),
        row("softsort_apply", 1, 50176, 700.0, 3000.0),
        row("softsort estimator (train)", 8, 50176, 900.0, 3000.0),
    ]
    assert [c["holds"] for c in long_targets(rows)] == [False] * 4
    rows[0].update(ms=20.0)
    rows[2].update(ms=300.0, peak_mb=300.0)
    rows[3].update(peak_mb=1200.0)
    assert [c["holds"] for c in long_targets(rows)] == [True] * 4


def test_train_step_benchmark_times_the_real_step():
    from diffsort_reorder.bench.train import check_targets, step_seconds

    seconds, early = step_seconds(
        "softsort", grid=4, backbone="txl", batch=8, steps=1, device="cpu"
    )
    assert seconds > 0 and early is None
    seconds, early = step_seconds(
        "saliency", grid=4, backbone="txl", batch=8, steps=1, device="cpu"
    )
    assert 0 < early < 1e3 * seconds  # the early pass is part of the step
    from diffsort_reorder.bench.train import build, early_pass_gflop, model_gflop

    run, images, _ = build("saliency", grid=4, backbone="txl", batch=8, device="cpu")
    early, whole = early_pass_gflop(run, images), model_gflop(run, images)
    assert 0 < early < whole  # one of the two blocks, on the same tokens
    assert early_pass_gflop(build("softsort", 4, "txl", 8, "cpu")[0], images) is None
    rows = [
        dict(method="softsort", N=64, ms=12.0, overhead_pct=20.0),
        dict(method="torchsort", N=64, ms=15.0, overhead_pct=50.0),
        dict(method="gumbel_sinkhorn", N=64, ms=30.0, overhead_pct=200.0),  # no target
    ]
    assert [c["holds"] for c in check_targets(rows)] == [True, False]


def test_data_benchmark_reads_a_photo_folder(tmp_path):
    from diffsort_reorder.bench.data import check_targets as data_targets
    from diffsort_reorder.bench.data import machine_line, write_photo_folder
    from diffsort_reorder.bench.data import run_benchmark as data_benchmark
    from diffsort_reorder.data import create_dataset

    root = write_photo_folder(tmp_path, num_images=6)
    train_set, val_set = create_dataset("imagefolder", root=str(root), image_size=32)
    assert len(train_set) == 6 and len(val_set) == 2 and train_set.num_classes == 2
    assert not torch.equal(train_set[0][0], train_set[2][0])  # shifted copies, not duplicates
    rows = data_benchmark(num_images=6, workers=(0, 2), repeats=2)
    plain = ["plain, 1 process", "plain, 2 processes"]  # the same images, no DataLoader
    assert [r["num_workers"] for r in rows] == [0, 2, *plain]
    assert all(len(r["turn_images_per_s"]) == 2 and r["images_per_s"] > 0 for r in rows)
    assert [r["first_epoch_images_per_s"] > 0 for r in rows[:2]] == [True, True]
    assert [r["first_epoch_images_per_s"] for r in rows[2:]] == [None, None]
    line = machine_line(rows)
    assert line.startswith("This machine: 2 plain decoder processes ran ") and "%" in line
    assert machine_line(rows[:2]) is None
    slow = [dict(num_workers=0, images_per_s=100.0), dict(num_workers=2, images_per_s=150.0)]
    assert [c["holds"] for c in data_targets(slow)] == [False]
    slow[1]["images_per_s"] = 190.0
    assert [c["holds"] for c in data_targets(slow)] == [True]
    # With turns, the median of the back-to-back ratios decides (here 1.5, 1.9, 2.0 -> 1.9).
    slow[0]["turn_images_per_s"], slow[1]["turn_images_per_s"] = [100, 100, 90], [150, 190, 180]
    assert [c["measured"].split()[0] for c in data_targets(slow)] == ["1.90x"]


def test_gpu_benchmark_refuses_a_machine_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["gpu", "--device", "cpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU but got --device cpu" in err


def test_gpu_benchmark_runs_the_base_size_configs(tmp_path):
    from diffsort_reorder.bench.data import write_photo_folder
    from diffsort_reorder.bench.gpu import run_overrides, training_row
    from diffsort_reorder.config import compose_config
    from diffsort_reorder.run.checks import check_config

    root = write_photo_folder(tmp_path / "photos", 4)  # a run config's data folder is checked
    cfg = compose_config([*run_overrides(root, "mamba", 64, "cpu"), "output_dir=/dev/null"])
    check_config(cfg)
    assert (cfg.backbone.size, cfg.data.options.image_size, cfg.data.patch_size) == (
        "base",
        224,
        16,
    )
    assert cfg.trainer.amp is True and cfg.method == "row_major"
    tiny = {"backbone.size": "tiny", "data.options.image_size": 32}
    row = training_row(root, "txl", 4, "cpu", compile=False, **tiny)  # the real step, small
    assert (row["batch"], row["N"]) == (4, 4) and row["steps_per_s"] > 0 and row["warmup_s"] > 0
    assert row["images_per_s"] == pytest.approx(4 * row["steps_per_s"])


def test_gpu_benchmark_helpers():
    from diffsort_reorder.bench.gpu import ddp_command, ddp_row, last_json

    command = ddp_command(["trainer.epochs=1"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "2", "-m", "diffsort_reorder.train", "trainer.epochs=1"]  # fmt: skip
    assert last_json('noise\n{"steps": 3}\n[1]\nlast words\n') == {"steps": 3}
    assert last_json("no json here") is None
    if torch.cuda.device_count() < 2:
        row = ddp_row(Path("/nonexistent"), Path("/nonexistent"))
        assert row["ddp"] == "skipped" and "needs 2 GPUs" in row["reason"]


def test_study_benchmark_composes_the_default_studys_run_shape(tmp_path):
    """A ``bench study`` worker's run config: the default study's overrides, softsort, the seed
    it is given; a folder named after a case as it is (commas, spaces) would not compose, which
    is why the cases' folders are slugs."""
    from diffsort_reorder.bench import study as bench_study
    from diffsort_reorder.config import compose_config

    folder = tmp_path / "2 runs side by side, spinning"
    overrides = bench_study.run_shape(folder, 7)
    study = compose_config([], config_name="study").study
    assert overrides[: len(study.overrides)] == list(study.overrides)
    cfg = compose_config(bench_study.run_shape(tmp_path / "run", 7))
    assert cfg.method == "softsort" and cfg.seed == 7 and cfg.data.name == "planted"
    with pytest.raises(Exception, match="multirun"):  # why case() names folders by a slug
        compose_config(overrides)
