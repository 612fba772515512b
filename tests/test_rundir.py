"""The seam between a run and a study: RunResult round-trips through JSON (the storage keeps it
so), a run's folder writes its files atomically and reads back only a finished result, and a
checkpoint of another config is refused."""

import json
import os

import pytest
import torch

from diffsort_reorder.config import compose_config, same_config
from diffsort_reorder.files import atomic, write_text
from diffsort_reorder.run.result import RunResult
from diffsort_reorder.run.rundir import RunDir
from diffsort_reorder.run.runtime import code_version


def finished(**changes) -> RunResult:
    fields = dict(seed=2, method="softsort", backbone="txl", data="planted", val_acc=0.5,
                  best_val_acc=0.6, val_loss=1.2, key_recall=0.25, train_seconds=3.5, steps=8,
                  epochs=2, finished=True, grid=[4, 4], key_patches=[3, 7],
                  order=list(range(16)), output_dir="x")  # fmt: skip
    return RunResult(**{**fields, **changes})


def test_a_result_round_trips_through_json():
    result = finished()
    assert RunResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    assert result.ok and result.metric("best_val_acc") == 0.6


def test_an_older_record_reads_with_defaults_and_without_unknown_keys():
    """Records written by an older version (fewer keys, or keys since dropped) still read."""
    old = {"seed": 1, "val_acc": 0.4, "finished": True, "no_longer_a_field": 3}
    result = RunResult.from_json(old)
    assert (result.seed, result.val_acc, result.finished) == (1, 0.4, True)
    assert result.wall_seconds == 0.0 and result.failed is None and result.order is None


def test_a_failure_is_a_result_without_metrics():
    result = RunResult.failure(3, FloatingPointError("non-finite loss nan"))
    assert not result.ok and result.failed == "FloatingPointError: non-finite loss nan"
    assert result.seed == 3 and result.val_acc is None


def test_the_folder_returns_only_a_finished_result_with_its_code_version(tmp_path):
    folder = RunDir(tmp_path / "run")
    assert folder.finished_result() is None
    cfg = compose_config([f"output_dir={folder.path}"])
    folder.write_config(cfg, code_version())
    assert folder.holds_config(cfg) and not folder.holds_config(compose_config(["seed=5"]))
    folder.write_result(finished(finished=False))
    assert folder.finished_result() is None  # stopped early: not a finished run
    folder.write_result(finished(code_version="older"))
    assert folder.finished_result().code_version == code_version()  # what run.json recorded
    assert sorted(p.name for p in folder.path.iterdir()) == [
        "config.yaml",
        "result.json",
        "run.json",
    ]


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    folder = RunDir(tmp_path)
    resolved = {"seed": 0, "output_dir": "a", "trainer": {"lr": 0.1, "resume": True}}
    folder.save_checkpoint({"config": resolved, "w": torch.ones(2)})
    moved = {**resolved, "output_dir": "b", "trainer": {"lr": 0.1, "resume": False}}
    assert same_config(resolved, moved)  # another folder, another runtime key: the same run
    assert torch.equal(folder.load_checkpoint(moved)["w"], torch.ones(2))
    other = {**resolved, "trainer": {"lr": 0.2, "resume": True}}
    with pytest.raises(ValueError, match="written by a run with another config"):
        folder.load_checkpoint(other)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "result.json", "old\n")
    with pytest.raises(KeyboardInterrupt), atomic(path, "w") as f:
        f.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_files_get_the_mode_a_plain_open_gives(tmp_path):
    """Reports are read by a group on a cluster: not mkstemp's 0600."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = write_text(tmp_path / "report.md", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
