"""The thread policy (issue 24): each run chooses torch's intra-op threads from the cores it may
use and the local workers sharing them; OpenMP waits asleep; a study's local workers."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_runs import tiny

from diffsort_reorder.run.loop import train
from diffsort_reorder.run.runtime import choose_threads, cores_available, use_threads
from diffsort_reorder.study.workers import Workers, jobs_of, share_of_cores


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_threads_share_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert cores_available() == 6
    assert choose_threads(None) == 6
    assert choose_threads(None, jobs=2) == 3
    assert choose_threads(None, jobs=4) == 1  # never below one
    assert choose_threads(None, jobs=12) == 1
    assert choose_threads(5, jobs=2) == 5  # a number is taken as it is
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a worker's share, or the user's choice
    assert choose_threads(None, jobs=1) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_threads_refuse_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"'trainer.threads' should be a positive integer"):
        choose_threads(bad)


def test_use_threads_sets_torch(restore_threads):
    assert use_threads(1) == 1 and torch.get_num_threads() == 1
    assert use_threads(3) == 3 and torch.get_num_threads() == 3


def test_a_run_uses_and_records_its_threads(tmp_path, restore_threads):
    torch.set_num_threads(2)
    result = train(tiny(tmp_path, "method=row_major", "trainer.threads=1", "trainer.epochs=1"))
    assert result.ok and torch.get_num_threads() == 1
    assert json.loads((tmp_path / "run.json").read_text())["threads"] == 1


def test_the_thread_count_is_not_part_of_a_runs_identity(tmp_path):
    from diffsort_reorder.config import config_digest

    one = tiny(tmp_path, "trainer.threads=1")
    auto = tiny(tmp_path)
    assert config_digest(_root_=one) == config_digest(_root_=auto)  # a study resumes elsewhere


def test_the_train_command_refuses_bad_threads_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "diffsort_reorder.train", "trainer.threads=0",
         f"output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: 'trainer.threads' should be an integer >= 1 but got 0"
    ]


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_openmp_waits_asleep_unless_the_user_chose(preset):
    """The wait policy must be in the environment before torch starts OpenMP: the package sets
    it on import (before its own import of torch); a value the user set wins."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, diffsort_reorder.run.loop, sys; print(os.environ['OMP_WAIT_POLICY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert done.stdout.strip() == (preset or "PASSIVE")


def test_jobs_auto_is_one_worker_per_core(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert jobs_of("auto") == 4 and jobs_of(2) == 2
    assert share_of_cores(2) == 2 and share_of_cores(3) == 1 and share_of_cores(8) == 1
    for bad in (0, "many", 1.5, False):
        with pytest.raises(ValueError, match=r"'study.jobs' should be auto or a positive integer"):
            jobs_of(bad)


def test_the_workers_a_study_starts_run_its_command_with_one_job_each(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    workers = Workers(["study=smoke", "study.jobs=2"], 2, tmp_path)
    command = workers.command()
    assert command[1:3] == ["-m", "diffsort_reorder.study"]
    # The user's overrides first, then what makes it a helper: the last value of a key wins.
    assert command[3:5] == ["study=smoke", "study.jobs=2"]
    assert command[5:] == ["study.jobs=1", "study.report=false", "study.progress=false"]
    assert workers.environment()["OMP_NUM_THREADS"] == "2"


def test_a_search_resumes_across_runtime_keys_older_versions_recorded(tmp_path):
    """A search's stored run config (``run_config``) may hold trainer keys that only say how a
    run is driven (threads, num_workers, resume): another value, or one an older version
    recorded and this one leaves out, is not another config."""
    import optuna

    from diffsort_reorder.study.checks import SIGNATURE, check_resumed_search

    search = optuna.create_study()
    check_resumed_search(search, tiny(tmp_path, "trainer.threads=1"), [], "txl/softsort")
    stored = search.user_attrs[SIGNATURE]
    assert "trainer.threads" not in stored and "trainer.epochs" in stored
    search.set_user_attr(SIGNATURE, {**stored, "trainer.resume": True, "trainer.num_workers": 0})
    check_resumed_search(search, tiny(tmp_path, "trainer.threads=2"), [], "txl/softsort")
    with pytest.raises(ValueError, match=r"another run config \(trainer.epochs: 2 -> 3"):
        check_resumed_search(search, tiny(tmp_path, "trainer.epochs=3"), [], "txl/softsort")


def test_a_run_folder_of_an_older_version_is_the_same_runs(tmp_path):
    """A run folder whose config lacks a runtime key this version adds (trainer.threads), or
    holds another value of one, is the same run's: it resumes, never cleared; another value of
    a key that changes what a run computes is another run's."""
    from diffsort_reorder.config import to_yaml
    from diffsort_reorder.run.rundir import RunDir

    cfg = tiny(tmp_path)
    folder = RunDir(tmp_path)
    older = to_yaml(cfg).replace("  threads: null\n", "")
    assert older != to_yaml(cfg)
    (tmp_path / "config.yaml").write_text(older)
    assert folder.holds_config(cfg)
    assert folder.holds_config(tiny(tmp_path, "trainer.threads=3"))
    assert not folder.holds_config(tiny(tmp_path, "trainer.epochs=3"))
    (tmp_path / "config.yaml").write_text("trainer: [unclosed")
    assert not folder.holds_config(cfg)  # damaged: another run's
