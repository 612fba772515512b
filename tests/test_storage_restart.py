"""A PostgreSQL restart under a running study (issue 23, items 2 and 3), on a real server of this
module's own (tests/postgres.py), so that stopping it disturbs no other test: the workers ride
the restart out (storage calls made again, locks taken back, no live trial failed as stale), stop
in one line when the server stays down longer than study.reconnect_seconds, and a seed run that
finished but could not be recorded is recorded by its worker, never trained again."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from postgres import Server
from tiny_runs import SMALL

from diffsort_reorder.config import compose_config
from diffsort_reorder.run.result import RunResult
from diffsort_reorder.study import study as study_module
from diffsort_reorder.study.search import fail_stale_trials
from diffsort_reorder.study.storage import PostgresBackend, open_backend, postgres
from diffsort_reorder.study.study import Study

SEED_RUNS = [f"txl/{m}/seed-{s}" for m in ("row_major", "softsort") for s in (1, 2)]


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def url(server, request):
    return server.create_database("r_" + request.node.name[:40].lower())


def small_config(tmp_path: Path, url: str, *overrides: str):
    return compose_config([*SMALL, f"study.output_dir={tmp_path}", f"study.storage={url}",
                           *overrides], config_name="study")  # fmt: skip


def trials(url: str, name: str = "smoke/txl/softsort") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def waiting_for_locks(url: str) -> int:
    """How many sessions wait for an advisory lock."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return conn.execute(sqlalchemy.text(query)).scalar()


def recorded(url: str) -> list[str]:
    return sorted(optuna.load_study(study_name="smoke/runs", storage=url).user_attrs)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # we beat, not optimize()
def test_storage_calls_locks_and_heartbeats_ride_out_a_restart(server, url, tmp_path, monkeypatch):
    """A restart cuts every connection. Optuna's calls are made again; no trial is stale until
    the server has been up for the grace period (its heartbeats could not be recorded while it
    was down); the lock a worker held is taken back before a waiter, cut too, asks again; and a
    run recorded while its lock is held goes through."""
    monkeypatch.setattr(postgres, "KEEP_SECONDS", 0.5)
    monkeypatch.setattr(postgres, "HEAD_START_SECONDS", 2.0)
    holder = open_backend(url, tmp_path, (1, 3), reconnect_seconds=30)
    other = open_backend(url, tmp_path, (1, 3), reconnect_seconds=30)
    study = optuna.create_study(study_name="s/txl/softsort", storage=holder.storage)
    trial = study.ask()
    holder.storage.record_heartbeat(trial._trial_id)
    records = holder.records("s")
    waited = threading.Event()

    def wait_for_the_lock() -> None:
        with other.locks("s").hold("run/x"):
            waited.set()

    with holder.locks("s").hold("run/x") as held:
        assert held
        waiter = threading.Thread(target=wait_for_the_lock, daemon=True)
        waiter.start()
        time.sleep(0.5)  # the waiter waits inside the server
        server.restart(down_seconds=3)  # the trial's last beat is now older than the grace (3 s)
        fail_stale_trials(study)
        assert study.trials[0].state == TrialState.RUNNING  # its worker lives: not failed
        records.put("txl/softsort/seed-1", "d1", RunResult(seed=1, val_acc=0.5))
        deadline = time.time() + 30  # the holder takes its lock back, the waiter waits again
        while waiting_for_locks(url) != 1 and time.time() < deadline:
            time.sleep(0.2)
        assert waiting_for_locks(url) == 1 and not waited.is_set()
        with other.locks("s").hold("run/x", wait=False) as taken:
            assert not taken
    assert waited.wait(15), "the waiter never got the lock its holder let go"
    waiter.join(15)
    assert other.records("s").get("txl/softsort/seed-1", "d1").val_acc == 0.5
    fail_stale_trials(study)  # up for longer than the grace now, and no beat since: stale
    assert study.trials[0].state == TrialState.FAIL


def test_a_study_rides_out_restarts_mid_trial_and_mid_seed_run(server, url, tmp_path, monkeypatch):
    """The server is restarted (down 2 s) while a trial reports its epochs and while a seed run
    holds its lock: the worker goes on, every run is trained once, the search has exactly its
    n_trials trials, all complete, and every seed run is recorded."""
    real_train, ran, restarts = study_module.train, [], []

    def train_across_a_restart(cfg, on_epoch=None):
        run = "/".join(Path(cfg.output_dir).parts[-2:])
        ran.append(run)
        if run in ("softsort/trial-0001", "softsort/seed-1"):
            restarts.append(threading.Thread(target=server.restart, args=(2,)))
            restarts[-1].start()
            time.sleep(0.5)  # down while the run reports and records
        return real_train(cfg, on_epoch=on_epoch)

    monkeypatch.setattr(study_module, "train", train_across_a_restart)
    try:
        Study(small_config(tmp_path, url, "study.reconnect_seconds=60")).run()
    finally:
        for restart in restarts:
            restart.join()
    assert len(restarts) == 2
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 3 + 4, ran
    assert [t.state for t in trials(url)] == [TrialState.COMPLETE] * 3
    assert recorded(url) == SEED_RUNS


def test_a_server_down_too_long_stops_the_worker_in_one_line(server, url, tmp_path):
    """The server stays down longer than study.reconnect_seconds (3 s): the worker stops with
    one line that says to run the same command again, and no traceback; once the server is
    back, the same command finishes the study with exactly its n_trials complete trials."""
    command = [sys.executable, "-m", "diffsort_reorder.study", *SMALL, f"study.storage={url}",
               f"study.output_dir={tmp_path}", "study.reconnect_seconds=3",
               "study.jobs=1"]  # fmt: skip
    worker = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and worker.poll() is None:  # until a trial reports
            names = optuna.study.get_all_study_names(url)
            if "smoke/txl/softsort" in names and any(t.intermediate_values for t in trials(url)):
                break
            time.sleep(0.3)
        server.shut_down()
        _, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
        server.start()
    lines = err.strip().splitlines()
    assert worker.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert lines[-1].startswith("error: lost 'study.storage'")
    assert "did not answer for 3 s" in lines[-1]
    assert lines[-1].endswith("run the same command again to continue")
    Study(small_config(tmp_path, url)).run()  # the same command, again
    found = trials(url)
    assert sum(t.state == TrialState.COMPLETE for t in found) == 3
    assert all("fail_reason" not in t.user_attrs for t in found)  # only interrupted ones failed
    assert recorded(url) == SEED_RUNS


def test_a_finished_unrecorded_seed_run_is_recorded_not_trained_again(url, tmp_path, monkeypatch):
    """Worker A trains row_major's seed 1 but cannot record it (the storage is lost) and stops.
    Started again, A records it before anything else; worker B, on another machine, then trains
    only the run nobody finished."""
    fixed = "study.methods=[row_major]"
    a = Study(small_config(tmp_path / "a", url, fixed))
    put = a.records.study.set_user_attr

    def lost_on_seed_1(key, value):
        if key == "txl/row_major/seed-1":
            raise optuna.exceptions.StorageInternalError("lost the server") from (
                sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed"))
            )
        put(key, value)

    monkeypatch.setattr(a.records.study, "set_user_attr", lost_on_seed_1)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        a.run()
    assert recorded(url) == []
    Study(small_config(tmp_path / "a", url, fixed))  # A again: records what it finished
    assert recorded(url) == ["txl/row_major/seed-1"]
    trained = []

    def counted(cfg, on_epoch=None):
        trained.append("/".join(Path(cfg.output_dir).parts[-2:]))
        return real_train(cfg, on_epoch=on_epoch)

    real_train = study_module.train
    monkeypatch.setattr(study_module, "train", counted)
    Study(small_config(tmp_path / "b", url, fixed)).run()
    assert trained == ["row_major/seed-2"]
    assert recorded(url) == ["txl/row_major/seed-1", "txl/row_major/seed-2"]


def test_a_server_that_is_restarting_is_not_a_wrong_url(server, tmp_path):
    """Opening: Optuna's wrapping of a lost connection is the server not answering, with what to
    do (not "give an Optuna database URL"); a server that says it is starting up is waited for;
    a stopped one is refused at once, saying to run the same command again once it is up."""
    backend = object.__new__(PostgresBackend)
    backend.url, backend.answered = "postgresql+psycopg://user:secret@db.example/study", False
    cause = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("terminating connection"))
    try:
        raise optuna.exceptions.StorageInternalError("during the commit") from cause
    except optuna.exceptions.StorageInternalError as err:
        message = str(backend.refusal(err))
    assert "did not answer" in message and "once it is up" in message
    assert "give an Optuna database URL" not in message and "secret" not in message
    starting = Exception("FATAL:  the database system is starting up")
    assert backend.restarting(sqlalchemy.exc.OperationalError("connect", {}, starting))
    refused = Exception("Connection refused")
    assert not backend.restarting(sqlalchemy.exc.OperationalError("connect", {}, refused))
    url = server.create_database("r_stopped")
    server.shut_down()
    try:
        started = time.monotonic()
        with pytest.raises(ValueError, match="did not answer") as refusal:
            open_backend(url, tmp_path)
        assert time.monotonic() - started < 5
        assert "run the same command again once it is up" in str(refusal.value)
    finally:
        server.start()
