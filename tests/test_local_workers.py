"""Local parallel workers (``study.jobs``, issue 24): a search samples each trial on the history a
single worker would see, and N workers give one worker's results."""

import csv
import os
import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from diffsort_reorder.study.search import BUSY, DONE, RAN, search_step, take_trial
from diffsort_reorder.study.storage import default_url, open_backend


def random_sampler(n):
    return optuna.samplers.RandomSampler(seed=n)


def test_a_new_trial_waits_for_the_running_ones_a_waiting_one_does_not():
    study = optuna.create_study()
    first = take_trial(study, 3, random_sampler, grace_period=60)
    assert isinstance(first, optuna.Trial)
    # Another worker's trial runs: sampling now would read another history than one worker's.
    assert take_trial(study, 3, random_sampler, grace_period=60) == BUSY
    study.enqueue_trial({"x": 1.0})  # a waiting trial (a retry, the defaults) has its point
    waiting = take_trial(study, 3, random_sampler, grace_period=60)
    assert isinstance(waiting, optuna.Trial) and waiting.number == 1
    study.tell(first, 0.5)
    assert take_trial(study, 3, random_sampler, grace_period=60) == BUSY  # trial 1 runs
    study.tell(waiting, 0.7)
    third = take_trial(study, 3, random_sampler, grace_period=60)
    assert isinstance(third, optuna.Trial) and third.number == 2
    study.tell(third, 0.1)
    assert take_trial(study, 3, random_sampler, grace_period=60) is None  # the budget is spent


def test_search_step_runs_one_trial_then_says_busy_or_done():
    study = optuna.create_study(direction="maximize")
    ticks = []
    step = dict(
        n_trials=2, lock=lambda: __import__("contextlib").nullcontext(), sampler=random_sampler,
        first_point=None, heartbeat=None, grace_period=60,
        tick=lambda trial, seconds: ticks.append(trial.number),
    )  # fmt: skip
    objective = lambda trial: trial.suggest_float("x", 0, 1)  # noqa: E731
    assert search_step(study, objective, **step) == RAN
    held = study.ask()  # another worker's trial, running
    assert search_step(study, objective, **step) == BUSY  # the budget is spent, one still runs
    study.tell(held, 0.0)
    assert search_step(study, objective, **step) == DONE
    assert ticks == [0] and len(study.trials) == 2


def by_seed(folder):
    with open(folder / "results_by_seed.csv") as f:
        rows = list(csv.DictReader(f))
    # Wall times differ between runs; everything else is the run's.
    return sorted(tuple(v for k, v in row.items() if k != "train_seconds") for row in rows)


def test_two_local_workers_give_one_workers_results(tmp_path):
    common = ["study=smoke", "study.progress=false", "study.seeds=3", "study.n_trials=2",
              "study.methods=[row_major,softsort,plackett_luce]"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in both: the same bits
    for jobs in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "diffsort_reorder.study", *common, f"study.jobs={jobs}",
             f"study.output_dir={tmp_path / str(jobs)}"],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == str(tmp_path / str(jobs) / "report.md")
    assert not (tmp_path / "1" / "workers").exists()
    # The second worker trained its share (a trial or a seed run), on the study's journal file.
    log = (tmp_path / "2" / "workers" / "worker-2.log").read_text()
    assert re.search(r"^txl/\w+ (trial \d+|seed-\d+|retrain-seed-\d+): ", log, re.M), log
    assert (tmp_path / "2" / "study.log").exists() and not (tmp_path / "2" / "study.db").exists()
    assert by_seed(tmp_path / "1") == by_seed(tmp_path / "2")
    # Every search has exactly its budget, whichever worker ran each trial.
    for jobs in (1, 2):
        storage = open_backend(None, tmp_path / str(jobs)).storage  # study.db, study.log
        for method in ("softsort", "plackett_luce"):
            trials = optuna.load_study(study_name=f"smoke/txl/{method}", storage=storage).trials
            assert len(trials) == 2
            assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def test_a_trial_another_worker_failed_meanwhile_keeps_that_state():
    """A worker cut off from the storage longer than the grace period finds its trial failed
    (and retried) by another: telling its result must not raise, and the FAIL stands."""
    from diffsort_reorder.study.search import run_trial

    study = optuna.create_study()
    trial = study.ask()

    def objective(t):
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)  # the other
        return 0.5

    ended = run_trial(study, trial, objective)
    assert ended.state == TrialState.FAIL and study.trials[0].state == TrialState.FAIL


def test_the_default_storage_is_a_journal_for_several_jobs_and_stays_what_it_was(tmp_path):
    fresh, single, begun = tmp_path / "fresh", tmp_path / "single", tmp_path / "begun"
    for folder in (fresh, single, begun):
        folder.mkdir()
    assert default_url(fresh, 2) == str((fresh / "study.log").resolve())
    assert default_url(single, 1) == f"sqlite:///{(single / 'study.db').resolve()}"
    (fresh / "study.log").touch()  # begun with several jobs: one job continues it there
    assert default_url(fresh, 1) == str((fresh / "study.log").resolve())
    (begun / "study.db").touch()  # begun on SQLite: several jobs are refused, not started afresh
    with pytest.raises(ValueError, match=r"'study.jobs' is 2, but this study's storage is the "
                                         r"SQLite file .*study.jobs=1"):  # fmt: skip
        default_url(begun, 2)
