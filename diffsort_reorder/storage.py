"""Where a study keeps its state, and how the workers that share it take turns.

A study's storage (``study.storage``) is the one thing its workers share: Optuna's trials, the
finished seed runs (:class:`RunRecords`) and the locks (:func:`open_locks`) all go through it, so
workers on different machines need no shared folder (only the same command and the data at the
same path, which is part of every run's config).

- SQLite (the default, ``<output_dir>/study.db``) serves one worker; a journal file (``*.log``)
  the workers of one machine. Their locks are ``fcntl`` locks in a folder beside the file.
- PostgreSQL (``postgresql+psycopg://user@host/db``) serves a cluster. Its locks are session
  advisory locks, which the server releases the moment their holder's connection ends (a killed
  worker included), and a trial's heartbeats let another worker retry a killed worker's trial.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.pool import NullPool

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# The pip package that provides each database driver module SQLAlchemy may ask for.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
}
CONNECT_SECONDS = 10  # a PostgreSQL server that does not answer within this is an error
# TCP keepalives: a lock whose holder's machine died (not just its process) ends within ~2 min.
PG_CONNECT_ARGS = {
    "connect_timeout": CONNECT_SECONDS,
    "keepalives": 1,
    "keepalives_idle": 60,
    "keepalives_interval": 10,
    "keepalives_count": 6,
}
SCHEMA_LOCK = "optuna-schema"  # held while a worker creates Optuna's tables (see open_storage)
log = logging.getLogger(__name__)


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES)


def journal_path(url: str) -> Path:
    return Path(url.removeprefix("journal:"))


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Without Optuna's ExperimentalWarning (heartbeats, fail_stale_trials, user attributes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


def shown(url: str) -> str:
    """``url`` without its password, for messages."""
    if is_journal(url):
        return url
    with contextlib.suppress(Exception):
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    return url


def storage_url(url: str | None, output_dir: Path) -> str:
    """``study.storage``, or SQLite in ``output_dir`` when it is null."""
    if url is None:
        output_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(output_dir / 'study.db').resolve()}"
    return str(url)


def _missing_module(err: BaseException | None) -> str | None:
    """The module whose absence caused ``err`` (Optuna wraps SQLAlchemy's ImportError)."""
    while err is not None:
        if isinstance(err, ModuleNotFoundError) and err.name:
            return err.name
        err = err.__cause__ or err.__context__
    return None


def _refusal(url: str, err: BaseException) -> ValueError:
    """What went wrong opening ``url``, said so the user knows what to do."""
    where = f"'study.storage' {shown(url)!r}"
    missing = _missing_module(err)
    if missing is not None:
        package = DRIVER_PACKAGES.get(missing.partition(".")[0], missing)
        ours = " (make install installs it)" if package == DRIVER_PACKAGES["psycopg"] else ""
        return ValueError(
            f"{where} needs the database driver {missing!r}, which is not installed; install it "
            f"with: pip install '{package}'{ours}"
        )
    if isinstance(err, sqlalchemy.exc.OperationalError) and is_postgres(url):
        reason = " ".join(str(err.orig).split()) if err.orig is not None else str(err)
        return ValueError(
            f"{where}: the PostgreSQL server did not answer ({reason}); start it, or check the "
            f"host, port, user and database in the URL"
        )
    return ValueError(
        f"{where} could not be opened ({type(err).__name__}: {' '.join(str(err).split())}); give "
        f"an Optuna database URL (sqlite:///path.db, postgresql+psycopg://user@host/db) or a "
        f"journal file (*.log)"
    )


def _engine(url: str) -> sqlalchemy.Engine:
    """An engine without a pool: each connection ends when it is closed (a lock with it)."""
    connect_args = PG_CONNECT_ARGS if is_postgres(url) else {}
    return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)


def open_storage(url: str, heartbeat: tuple[int, int] = (10, 30)):
    """The Optuna storage ``url`` names: a journal file (``*.log``, ``*.jsonl``, ``*.journal`` or
    ``journal:<path>``) or a database URL. ``heartbeat`` is ``(interval, grace)`` in seconds: a
    database trial whose worker has been silent for ``grace`` is failed, then retried.

    Workers opening a fresh PostgreSQL database at once take turns creating Optuna's tables (one
    would otherwise die on ``DuplicateTable``)."""
    try:
        if is_journal(url):
            path = journal_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        lock = _advisory_lock(_engine(url), SCHEMA_LOCK) if is_postgres(url) else _no_lock()
        with lock, quiet_experimental():
            interval, grace = heartbeat
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=grace,
                engine_kwargs={"connect_args": PG_CONNECT_ARGS} if is_postgres(url) else None,
            )
    except Exception as err:  # noqa: BLE001  (driver, SQLAlchemy, OS and Optuna errors alike)
        raise _refusal(url, err) from err


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def _no_lock() -> Iterator[bool]:
    yield True


def _lock_key(name: str) -> int:
    """A signed 64-bit key for ``name`` (PostgreSQL's advisory locks are keyed by bigint)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def _advisory_lock(engine: sqlalchemy.Engine, name: str, wait: bool = True) -> Iterator[bool]:
    """A PostgreSQL session advisory lock on ``name``, on a connection of its own, so the server
    releases it when this process ends, however it ends. Yields whether it is held (always, when
    ``wait``)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # A server's timeouts must not end the wait for a lock, or a lock held for hours
        # (idle_session_timeout exists from PostgreSQL 14 on).
        settings = ["statement_timeout"]
        if (conn.dialect.server_version_info or (0,)) >= (14,):
            settings.append("idle_session_timeout")
        for setting in settings:
            conn.execute(sqlalchemy.text("SELECT set_config(:name, '0', false)"), {"name": setting})
        call = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
        held = conn.execute(sqlalchemy.text(f"SELECT {call}(:key)"), {"key": _lock_key(name)})
        held = wait or bool(held.scalar())
        try:
            yield held
            if held:  # held only while its connection lives: say so if it did not
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                 {"key": _lock_key(name)})  # fmt: skip
                except sqlalchemy.exc.DBAPIError as err:
                    log.warning("the lock %r was lost with its connection to the study's "
                                "database (%s): another worker may have done the same work "
                                "(its result is the same run's)", name, err.orig)  # fmt: skip
        finally:
            with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                conn.close()


class AdvisoryLocks:
    """Locks for workers anywhere: PostgreSQL advisory locks in the study's database."""

    def __init__(self, url: str, namespace: str) -> None:
        self.engine, self.namespace = _engine(url), namespace

    def hold(self, name: str, wait: bool = True):
        """A context that holds the lock ``name`` (yields True), or, with ``wait=False`` and
        another worker holding it, holds nothing (yields False)."""
        return _advisory_lock(self.engine, f"{self.namespace}/{name}", wait)


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


def open_locks(url: str, namespace: str, output_dir: Path) -> AdvisoryLocks | FileLocks:
    """The locks that go with the storage ``url``: advisory locks on PostgreSQL; beside the file
    for SQLite and journals; in ``output_dir`` for any other database, which then coordinates
    the workers of one machine only."""
    if is_postgres(url):
        return AdvisoryLocks(url, namespace)
    if is_journal(url):
        path = journal_path(url)
    elif url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
    else:
        log.warning("study.storage %s: workers on other machines are not coordinated (locks live "
                    "in %s); use PostgreSQL for a cluster", shown(url), output_dir)  # fmt: skip
        return FileLocks(output_dir / ".locks" / namespace)
    return FileLocks(path.with_name(path.name + ".locks") / namespace)


# --------------------------------------------------------------------------- heartbeats
def is_heartbeat_enabled(storage) -> bool:
    """Whether ``storage`` keeps trial heartbeats (a database opened by :func:`open_storage`)."""
    return hasattr(storage, "record_heartbeat") and bool(storage.get_heartbeat_interval())


@contextlib.contextmanager
def heartbeat(storage, trial_id: int) -> Iterator[None]:
    """Record ``trial_id``'s heartbeat every interval while the block runs (what Optuna's
    ``optimize`` does; a study asks for its trials itself, see search.py). Storages without
    heartbeats (journals) get none."""
    if not is_heartbeat_enabled(storage):
        yield
        return
    interval = storage.get_heartbeat_interval()
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as err:  # noqa: BLE001  (a dropped connection: keep trying)
                log.warning("trial %d: heartbeat not recorded (%s); retrying", trial_id, err)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- finished runs
class RunRecords:
    """The study's finished seed runs, kept in the storage (as the user attributes of an Optuna
    study named ``<study>/runs``), so every worker reads every run, whoever trained it.

    A record is ``{"digest": <its run config's digest>, "result": <train()'s result>}``; a record
    of another config than the one asked for (the best trial changed) does not count."""

    def __init__(self, storage, study_name: str) -> None:
        with quiet_experimental():
            self.study = optuna.create_study(
                study_name=f"{study_name}/runs", storage=storage, load_if_exists=True
            )
        self.known: dict[str, dict] = {}

    def get(self, key: str, digest: str) -> dict | None:
        """The result of run ``key`` (``backbone/method/run``) with config ``digest``, if one
        finished. Records already read are kept: the storage is read again (every worker's
        records at once) only for one not known yet."""
        record = self.known.get(key)
        if record is None or record["digest"] != digest:
            self.known = self.study.user_attrs
            record = self.known.get(key)
        if record is None or record["digest"] != digest:
            return None
        return record["result"]

    def put(self, key: str, digest: str, result: dict) -> None:
        self.study.set_user_attr(key, {"digest": digest, "result": result})
        self.known[key] = {"digest": digest, "result": result}
