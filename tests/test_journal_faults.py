"""Faults of a study on a journal file, on real files and real processes: a worker SIGKILLed
mid-trial (its trial is retried by the next worker, which need not wait for it), a torn last line
(cut off before anything is appended, so every reader still reads), a damaged line (refused in
one line, the file left as it was) and trials that never finished (listed by the report)."""

import os
import signal
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState
from test_report import run_result

from diffsort_reorder.config import compose_config
from diffsort_reorder.study.cli import main as study_main
from diffsort_reorder.study.report import write_report
from diffsort_reorder.study.search import counts_toward_budget, fail_stale_trials
from diffsort_reorder.study.storage import open_backend

# One learned method, one trial, one seed; a trial long enough (40 tiny epochs) to be killed in.
STUDY = [
    "study=smoke",
    "study.methods=[softsort]",
    "study.protocol=curriculum",
    "study.oracle=false",
    "study.pruner.name=none",
    "study.progress=false",
    "study.n_trials=1",
    "study.seeds=1",
    "study.start_from_defaults=false",
    "study.wait_for_workers=600",
    "++study.method_overrides.softsort=['trainer.epochs=40','trainer.curriculum.policy_epochs=38']",
]


def plain(path) -> optuna.storages.JournalStorage:
    """The journal as Optuna alone reads it (any reader, any version of this suite)."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def trials_of(storage, name: str = "s") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():  # Optuna: heartbeats outside optimize()
        warnings.simplefilter("ignore")
        return study.ask()


def journal_with_trials(path, n: int = 2):
    """A journal written by a worker: study ``s`` with ``n`` complete trials; its backend."""
    backend = open_backend(str(path), path.parent)
    study = optuna.create_study(study_name="s", storage=backend.storage)
    for k in range(n):
        trial = ask(study)
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, 0.1 * k)
    return backend


def worker(folder, journal) -> subprocess.Popen:
    command = [sys.executable, "-m", "diffsort_reorder.study", *STUDY,
               f"study.storage={journal}", f"study.output_dir={folder / 'out'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_a_killed_workers_trial_is_retried_by_the_next_worker_without_waiting(tmp_path):
    """A worker SIGKILLed mid-trial leaves its trial RUNNING (journals keep no heartbeats); the
    same command run again sees that trial's lock free, fails it and runs its parameters again
    at once (not after wait_for_workers, 600 s), and the method ends with n_trials trials."""
    journal = tmp_path / "study.log"
    first = worker(tmp_path, journal)
    deadline = time.time() + 120
    while time.time() < deadline:  # until its trial has reported an epoch
        found = []
        if journal.exists():
            storage = plain(journal)
            if "smoke/txl/softsort" in [s.study_name for s in storage.get_all_studies()]:
                found = trials_of(storage, "smoke/txl/softsort")
        if found and found[0].intermediate_values:
            break
        assert first.poll() is None, first.communicate()[1][-2000:]
        time.sleep(0.3)
    else:
        first.kill()
        pytest.fail(f"the first worker's trial never reported: {first.communicate()[1][-2000:]}")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert trials_of(plain(journal), "smoke/txl/softsort")[0].state == TrialState.RUNNING
    started = time.monotonic()
    second = worker(tmp_path, journal)
    try:
        err = second.communicate(timeout=240)[1]
    except subprocess.TimeoutExpired:
        second.kill()
        pytest.fail(f"the second worker was still running after 240 s: {second.communicate()[1]}")
    assert second.returncode == 0, err[-3000:]
    assert "waiting for running trial" not in err, err[-2000:]
    assert time.monotonic() - started < 240
    killed, retry = trials_of(plain(journal), "smoke/txl/softsort")
    assert killed.state == TrialState.FAIL and "fail_reason" not in killed.user_attrs
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.params == killed.params
    assert sum(map(counts_toward_budget, [killed, retry])) == 1  # study.n_trials
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failures\n\nNone." in report  # the killed trial was run again: nothing lost


def test_a_live_workers_trial_is_not_stale_and_a_killed_ones_is(tmp_path):
    """The seam: a trial taken by a process that is alive is never failed, however long it
    runs; once that process is SIGKILLed, ``fail_stale_trials`` fails it (FAIL without a
    reason: the search runs it again)."""
    journal = tmp_path / "study.log"
    journal_with_trials(journal, n=0)
    script = (
        "import sys, warnings; from pathlib import Path; import optuna\n"
        "from diffsort_reorder.study.storage import open_backend\n"
        f"storage = open_backend({str(journal)!r}, Path('.')).storage\n"
        "warnings.simplefilter('ignore')\n"
        "optuna.load_study(study_name='s', storage=storage).ask()\n"
        "print('running', flush=True); sys.stdin.readline()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "running"
        storage = open_backend(str(journal), tmp_path).storage
        study = optuna.load_study(study_name="s", storage=storage)
        fail_stale_trials(study)
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # alive
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fail_stale_trials(study)
    (trial,) = trials_of(plain(journal))
    assert trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs


def test_a_torn_last_line_is_cut_before_anything_is_appended(tmp_path, caplog):
    """A writer killed mid-line leaves a torn last line. Optuna's readers skip it, but its next
    writer appended onto it, and from then on every reader failed. A worker that opens the file
    after, and one that was running when the line was torn, both cut it off before appending
    (with one warning naming the file and the bytes), so every reader reads what they append."""
    journal = tmp_path / "study.log"
    running = journal_with_trials(journal)  # a worker with the file open, still running
    whole = journal.read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    journal.write_bytes(whole[:-20])  # the last record (trial 1 COMPLETE), cut mid-line
    opened = open_backend(str(journal), tmp_path)  # the same command run again
    optuna.load_study(study_name="s", storage=opened.storage).set_user_attr("next", "worker")
    with open(journal, "ab") as f:  # another writer killed mid-line
        f.write(last[:-30])
    running_study = optuna.load_study(study_name="s", storage=running.storage)
    running_study.set_user_attr("running", "worker")
    cut = [len(last) - 20, len(last) - 30]  # the torn lines' bytes
    said = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
    assert len(said) == 2 and all(str(journal) in line for line in said)
    assert [f"({n} bytes" in line for n, line in zip(cut, said, strict=True)] == [True, True]
    assert journal.read_bytes().endswith(b"\n")
    for storage in (plain(journal), open_backend(str(journal), tmp_path).storage):
        study = optuna.load_study(study_name="s", storage=storage)
        assert study.user_attrs == {"next": "worker", "running": "worker"}
        # The torn record never counted: trial 1 is as before it, RUNNING with no live worker.
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]


def damage(journal, where: str) -> int:
    """Damage ``journal`` as a writer that appended onto a torn line did: a cut-off record and
    a whole one on one line, in the middle or at the end; returns that line's number."""
    lines = journal.read_bytes().splitlines(keepends=True)
    number = len(lines) - 1 if where == "middle" else len(lines)
    merged = lines[number - 1][:-20] + lines[number - 1]
    lines[number - 1] = merged
    journal.write_bytes(b"".join(lines))
    return number


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_damaged_line_is_refused_in_one_line_and_nothing_is_appended(tmp_path, capsys, where):
    journal = tmp_path / "study.log"
    journal_with_trials(journal)
    number = damage(journal, where)
    before = journal.read_bytes()
    with pytest.raises(ValueError, match=f"line {number} is not a journal record") as refused:
        open_backend(str(journal), tmp_path)
    assert str(journal) in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(SystemExit) as stopped:  # the command line: one line, no traceback
        study_main(["study=smoke", "study.methods=[row_major,softsort]",
                    f"study.output_dir={tmp_path}/out", f"study.storage={journal}"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == f"error: {refused.value}"
    assert journal.read_bytes() == before


def test_the_report_lists_trials_that_never_finished(tmp_path):
    """A trial still RUNNING (or WAITING) when the report is written never finished: it is
    listed under Failures, with its method, number and state, not 'None.'."""
    backend = open_backend(str(tmp_path / "study.log"), tmp_path)
    study = optuna.create_study(study_name="smoke/txl/softsort", storage=backend.storage,
                                direction="maximize")  # fmt: skip
    done = ask(study)
    done.suggest_float("estimator.lr", 0.01, 1.0, log=True)
    study.tell(done, 0.5)
    ask(study).suggest_float("estimator.lr", 0.01, 1.0, log=True)  # RUNNING, never told
    study.enqueue_trial({"estimator.lr": 0.1})  # WAITING, never taken
    out = tmp_path / "out"
    cfg = compose_config(["study=smoke", f"study.output_dir={out}", "study.seeds=2",
                          "study.methods=[row_major,softsort]"], config_name="study")  # fmt: skip
    results = {("curriculum", "txl", m): [run_result(tmp_path, m, s, 0.5, 0.6) for s in (1, 2)]
               for m in ("row_major", "softsort")}  # fmt: skip
    report = write_report(out, cfg, {("txl", "softsort"): study}, results).read_text()
    failures = report.split("## Failures\n\n")[1].split("\n\n")[0].splitlines()
    assert failures == [
        "- `softsort` (txl, curriculum) trial 1: never finished (RUNNING when this report was "
        "written)",
        "- `softsort` (txl, curriculum) trial 2: never finished (WAITING when this report was "
        "written)",
    ]
