"""What every storage backend shares: the :class:`Backend` interface and the database default
(:class:`DatabaseBackend`, whose storage rides out a server that went away: :mod:`.reconnect`),
file locks, trial heartbeats and the study's finished runs (:class:`RunRecords`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy

from ...files import write_json
from ...run.result import RunResult
from .reconnect import (
    RECONNECT_SECONDS,
    PatientStorage,
    StorageLost,
    lost_message,
    one_line,
    patiently,
    reason,
    shown,
    tried_once,
)

# The pip package that provides each database driver module SQLAlchemy may ask for.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
}
OWED = "owed-record.json"  # in a run's folder: its record, until the storage holds it
log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Without Optuna's ExperimentalWarning (heartbeats, fail_stale_trials, user attributes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _missing_module(err: BaseException | None) -> str | None:
    """The module whose absence caused ``err`` (Optuna wraps SQLAlchemy's ImportError)."""
    while err is not None:
        if isinstance(err, ModuleNotFoundError) and err.name:
            return err.name
        err = err.__cause__ or err.__context__
    return None


class Backend:
    """One kind of ``study.storage`` URL: opens the Optuna storage (``self.storage``) and owns
    the locks its workers take turns with, the run records, whether its trials have heartbeats
    (a killed worker's trial is then failed and retried) and which errors mean that the storage
    went away mid-study (:attr:`lost`)."""

    heartbeats = False
    lost: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        url: str,
        output_dir: Path,
        heartbeat: tuple[int, int],
        reconnect_seconds: float = RECONNECT_SECONDS,
    ) -> None:
        self.url, self.output_dir = url, output_dir
        self.reconnect_seconds = reconnect_seconds
        try:  # a server that says it is restarting is waited for; other errors are refused
            self.storage = patiently(lambda: self.open(heartbeat), reconnect_seconds, self.shown,
                                     self.restarting)  # fmt: skip
        except Exception as err:  # noqa: BLE001  (driver, SQLAlchemy, OS and Optuna errors alike)
            raise self.refusal(err) from err

    @classmethod
    def accepts(cls, url: str) -> bool:
        raise NotImplementedError

    def open(self, heartbeat: tuple[int, int]) -> optuna.storages.BaseStorage:
        raise NotImplementedError

    @property
    def shown(self) -> str:
        """The URL without its password, for messages."""
        return shown(self.url)

    def locks(self, namespace: str):
        """The locks of ``namespace`` (a study's name): an object whose ``hold(name, wait)``
        is a context that yields whether it holds lock ``name``."""
        raise NotImplementedError

    def records(self, study_name: str, folder: Path | None = None) -> RunRecords:
        """The study's finished runs; those that finished in ``folder`` (this worker's runs) but
        are not recorded yet are recorded first (:meth:`RunRecords.settle`)."""
        records = RunRecords(self.storage, study_name)
        if folder is not None:
            records.settle(folder)
        return records

    def heartbeat(self, trial_id: int):
        """A context that records ``trial_id``'s heartbeat while it runs (nothing without)."""
        return contextlib.nullcontext()

    def restarting(self, err: BaseException) -> bool:
        """Whether ``err``, met opening the storage, says its server is restarting (worth
        waiting for), not that the URL is wrong."""
        return False

    def refusal(self, err: BaseException) -> ValueError:
        """What went wrong opening the storage, said so the user knows what to do."""
        where = f"'study.storage' {self.shown!r}"
        missing = _missing_module(err)
        if missing is not None:
            package = DRIVER_PACKAGES.get(missing.partition(".")[0], missing)
            ours = " (make install installs it)" if package == DRIVER_PACKAGES["psycopg"] else ""
            return ValueError(
                f"{where} needs the database driver {missing!r}, which is not installed; "
                f"install it with: pip install '{package}'{ours}"
            )
        return ValueError(
            f"{where} could not be opened ({type(err).__name__}: {one_line(err)}); give an "
            f"Optuna database URL (sqlite:///path.db, postgresql+psycopg://user@host/db) or a "
            f"journal file (*.log)"
        )

    def lost_message(self, err: BaseException) -> str:
        """One line for :attr:`lost` errors (Optuna wraps the driver's in StorageInternalError;
        :class:`StorageLost` has its line)."""
        return str(err) if isinstance(err, StorageLost) else lost_message(self.shown, err)


class DatabaseBackend(Backend):
    """Any SQLAlchemy database URL (the default for a URL no other backend accepts): trials with
    heartbeats, file locks in ``output_dir``, so it coordinates the workers of one machine."""

    heartbeats = True
    # The server went away mid-study (for longer than study.reconnect_seconds: StorageLost):
    # SQLAlchemy's error, or Optuna's wrapping of it.
    lost = (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)
    engine_kwargs: dict | None = None
    storage_class: type[PatientStorage] = PatientStorage

    @classmethod
    def accepts(cls, url: str) -> bool:
        return True

    def open(self, heartbeat: tuple[int, int]) -> optuna.storages.BaseStorage:
        interval, grace = heartbeat
        engine_kwargs = {"pool_pre_ping": True, **(self.engine_kwargs or {})}
        with quiet_experimental():
            return self.storage_class(self.url, self.reconnect_seconds,
                                      heartbeat_interval=interval, grace_period=grace,
                                      engine_kwargs=engine_kwargs)  # fmt: skip

    def locks(self, namespace: str) -> FileLocks:
        where = self.output_dir
        log.warning("study.storage %s: workers on other machines are not coordinated (locks "
                    "live in %s); use PostgreSQL for a cluster", self.shown, where)  # fmt: skip
        return FileLocks(self.output_dir / ".locks" / namespace)

    def heartbeat(self, trial_id: int):
        return heartbeat(self.storage, trial_id)


class FileLocks:
    """Locks for the workers of one machine: ``fcntl`` locks on files in ``folder``, which the
    system releases when their holder ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def hold(self, name: str, wait: bool = True) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / (re.sub(r"[^A-Za-z0-9_.-]+", ".", name) + ".lock")
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(storage, trial_id: int) -> Iterator[None]:
    """Record ``trial_id``'s heartbeat every interval while the block runs (what Optuna's
    ``optimize`` does; a study asks for its trials itself, see :mod:`..search`). A beat that
    does not reach the storage is tried once (the next one tries again), so the block's end
    never waits for the storage; one warning when beats fail, one when they go through again."""
    interval = storage.get_heartbeat_interval()
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        failing = False
        while not stop.wait(interval):
            try:
                with tried_once():
                    storage.record_heartbeat(trial_id)
            except Exception as err:  # noqa: BLE001  (a dropped connection: keep trying)
                if not failing:
                    log.warning("trial %d: heartbeat not recorded (%s); trying every %g s",
                                trial_id, reason(err), interval)  # fmt: skip
                failing = True
                continue
            if failing:
                log.warning("trial %d: heartbeat recorded again", trial_id)
            failing = False

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class RunRecords:
    """The study's finished seed runs, kept in the storage (as the user attributes of an Optuna
    study named ``<study>/runs``), so every worker reads every run, whoever trained it.

    A record is ``{"digest": <its run config's digest>, "result": RunResult.to_json()}``; a
    record of another config than the one asked for (the best trial changed) does not count."""

    def __init__(self, storage, study_name: str) -> None:
        with quiet_experimental():
            self.study = optuna.create_study(
                study_name=f"{study_name}/runs", storage=storage, load_if_exists=True
            )
        self.known: dict[str, dict] = {}

    def get(self, key: str, digest: str) -> RunResult | None:
        """The result of run ``key`` (``backbone/method/run``) with config ``digest``, if one
        finished. Records already read are kept: the storage is read again (every worker's
        records at once) only for one not known yet."""
        record = self.known.get(key)
        if record is None or record["digest"] != digest:
            self.known = self.study.user_attrs
            record = self.known.get(key)
        if record is None or record["digest"] != digest:
            return None
        return RunResult.from_json(record["result"])

    def put(self, key: str, digest: str, result: RunResult, folder: str | Path | None = None):
        """Record ``result`` as run ``key``'s. With the run's ``folder``, the record is written
        there first (``owed-record.json``) and removed once the storage holds it, so that a
        worker stopped in between (the storage down for longer than study.reconnect_seconds)
        records it when it starts again (:meth:`settle`), and no worker trains the run again."""
        record = {"digest": digest, "result": result.to_json()}
        owed = Path(folder) / OWED if folder is not None else None
        if owed is not None:
            write_json(owed, {"key": key, **record})
        self.study.set_user_attr(key, record)
        self.known[key] = record
        if owed is not None:
            owed.unlink(missing_ok=True)  # another worker may have settled it meanwhile

    def settle(self, folder: Path) -> list[str]:
        """Record the runs that finished under ``folder`` but were not recorded (their
        ``owed-record.json``); a run the storage holds a record of already, of any config (the
        best config may have changed since), keeps it. Returns the keys recorded."""
        settled, recorded = [], None
        for path in sorted(Path(folder).rglob(OWED)):
            try:
                owed = json.loads(path.read_text())
            except ValueError as err:  # damaged: the run's own folder still holds its result
                log.warning("%r is damaged (%s): skipped", str(path), err)
                continue
            recorded = self.study.user_attrs if recorded is None else recorded  # read once
            if owed["key"] not in recorded and owed["key"] not in self.known:
                self.put(owed["key"], owed["digest"], RunResult.from_json(owed["result"]))
                log.info("recorded %s, which finished here but was not recorded", owed["key"])
                settled.append(owed["key"])
            path.unlink(missing_ok=True)
        return settled
