"""Workers on a real PostgreSQL server (tests/postgres.py): a study shared by workers that have
nothing else in common, a fresh database opened by many at once, a killed worker's trial retried,
and storage URLs that cannot work refused with what to do."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from postgres import free_port
from tiny_runs import SMALL

from diffsort_reorder.study.storage import open_backend
from diffsort_reorder.study.study import Study

ROOT = Path(__file__).resolve().parent.parent


def start_worker(folder: Path, url: str, *overrides: str) -> subprocess.Popen:
    """A study worker as a cluster runs it: the same command, in a folder of its own (its
    outputs go to the default, relative output_dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "diffsort_reorder.study", *SMALL, f"study.storage={url}",
               *overrides]  # fmt: skip
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def finish(worker: subprocess.Popen, timeout: float = 240) -> str:
    out, err = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, err[-3000:]
    return out


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_workers_on_different_machines_share_one_study(tmp_path, postgres_url):
    """Three workers, each with its own output folder (no shared filesystem), one database:
    exactly n_trials trials, every seed run trained once by one of them, the same report. On a
    database a worker waits for the others' trials whatever wait_for_workers says (0 here), so
    every worker picks the same best config."""
    folders = [tmp_path / f"machine-{k}" for k in range(3)]
    workers = [start_worker(f, postgres_url, "study.wait_for_workers=0") for f in folders]
    for worker in workers:
        finish(worker)
    found = trials(postgres_url, "smoke/txl/softsort")
    assert len(found) == 3 and all(t.state == TrialState.COMPLETE for t in found)
    study = Path("outputs/study/smoke")
    for method in ("row_major", "softsort"):
        for seed in (1, 2):
            trained = [
                f
                for f in folders
                if (f / study / "train/txl" / method / f"seed-{seed}/result.json").exists()
            ]
            assert len(trained) == 1, (method, seed, trained)  # fmt: skip
    for name in ("report.md", "results.csv"):
        texts = {(f / study / name).read_bytes() for f in folders}
        assert len(texts) == 1, f"the workers wrote different {name}"
    report = (folders[0] / study / "report.md").read_text()
    assert "| softsort |" in report and "| row_major |" in report


def test_workers_opening_a_fresh_database_at_once_all_start(postgres_url):
    """Optuna creates its tables on first open; two workers doing so at once used to lose one to
    DuplicateTable (4 or 5 of 6 without the turn). Six processes, each ready with Optuna
    imported, are released together to open one fresh database."""
    script = (
        "import sys; from pathlib import Path; from diffsort_reorder.study.storage import "
        "open_backend\nprint('ready', flush=True); sys.stdin.readline()\n"
        f"open_backend({postgres_url!r}, Path('.')).records('race')\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(6)]  # fmt: skip
    assert [w.stdout.readline().strip() for w in workers] == ["ready"] * 6
    for worker in workers:  # go
        worker.stdin.write("\n")
        worker.stdin.flush()
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 6, "\n".join(errors)[-3000:]
    assert optuna.study.get_all_study_names(postgres_url) == ["race/runs"]


def test_a_killed_workers_trial_is_retried_by_another(tmp_path, postgres_url):
    """A worker SIGKILLed mid-trial leaves its trial RUNNING and its locks to the server; its
    heartbeat goes stale, and a second worker fails that trial and runs its parameters again."""
    slow = ["study.methods=[softsort]", "study.n_trials=1", "study.seeds=1",
            "study.start_from_defaults=false",
            "++study.method_overrides.softsort=['trainer.epochs=40',"
            "'trainer.curriculum.policy_epochs=38']"]  # fmt: skip
    first = start_worker(tmp_path / "a", postgres_url, *slow)
    deadline = time.time() + 90
    while time.time() < deadline:  # until its trial has run for a while
        names = optuna.study.get_all_study_names(postgres_url)
        found = trials(postgres_url, "smoke/txl/softsort") if "smoke/txl/softsort" in names else []
        if found and found[0].intermediate_values:
            break
        time.sleep(0.5)
    else:
        first.kill()
        pytest.fail(f"the first worker's trial never reported: {first.communicate()[1][-2000:]}")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert trials(postgres_url, "smoke/txl/softsort")[0].state == TrialState.RUNNING
    finish(start_worker(tmp_path / "b", postgres_url, *slow))
    killed, retry = trials(postgres_url, "smoke/txl/softsort")
    assert killed.state == TrialState.FAIL and "fail_reason" not in killed.user_attrs
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.params == killed.params


@pytest.mark.parametrize("kind", ["postgres", "sqlite", "journal"])
def test_a_killed_holders_lock_is_released(tmp_path, request, kind):
    """A lock held by another process is refused without waiting; once that process is
    SIGKILLed it is free at once (the seed run it was training goes to another worker):
    advisory locks on PostgreSQL, fcntl locks beside a SQLite or journal file."""
    url = {"postgres": lambda: request.getfixturevalue("postgres_url"),
           "sqlite": lambda: f"sqlite:///{tmp_path / 'study.db'}",
           "journal": lambda: str(tmp_path / "journal.log")}[kind]()  # fmt: skip
    script = (
        "import sys, time; from pathlib import Path; from diffsort_reorder.study.storage import "
        f"open_backend\nwith open_backend({url!r}, Path({str(tmp_path)!r})).locks('s')"
        ".hold('run/x'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    locks = open_backend(url, tmp_path).locks("s")
    with locks.hold("run/x", wait=False) as held:
        assert not held
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.hold("run/x", wait=False) as held:
        assert held


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+pymysql://user@127.0.0.1/db", "pip install 'pymysql'"),
        ("postgresql+psycopg2://user@127.0.0.1/db", "pip install 'psycopg2-binary'"),
        (f"postgresql+psycopg://user:secret@127.0.0.1:{free_port()}/db",
         "the PostgreSQL server did not answer"),
    ],
    ids=["no-pymysql", "no-psycopg2", "no-server"],  # the same in every pytest-xdist worker
)  # fmt: skip
def test_a_storage_that_cannot_work_is_refused_before_training(tmp_path, url, message):
    from diffsort_reorder.config import compose_config

    cfg = compose_config([*SMALL, f"study.output_dir={tmp_path}", f"study.storage={url}"],
                         config_name="study")  # fmt: skip
    with pytest.raises(ValueError, match="'study.storage'") as refused:
        Study(cfg)
    assert message in str(refused.value)
    assert "secret" not in str(refused.value)  # the password is not shown
