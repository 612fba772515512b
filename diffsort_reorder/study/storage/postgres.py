"""PostgreSQL: a study shared by workers on many machines. Its locks are session advisory locks,
which the server releases the moment their holder's connection ends (a killed worker included),
and a trial's heartbeats let another worker retry a killed worker's trial.

A server restart cuts every connection, and with them every lock: the workers ride it out for
``study.reconnect_seconds`` (:mod:`.reconnect`). A worker that held a lock takes it back as soon
as the server answers, and one that was waiting for a lock waits again, after a head start for
the holders; no trial counts as stale until the server has been up for the grace period (its
workers could not beat while it was down)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator

import optuna
import sqlalchemy
from sqlalchemy.pool import NullPool

from .base import DatabaseBackend
from .reconnect import RECONNECT_SECONDS, PatientStorage, is_lost, patiently, reason, retried

CONNECT_SECONDS = 10  # a PostgreSQL server that does not answer within this is an error
# TCP keepalives: a lock whose holder's machine died (not just its process) ends within ~2 min.
PG_CONNECT_ARGS = {
    "connect_timeout": CONNECT_SECONDS,
    "keepalives": 1,
    "keepalives_idle": 60,
    "keepalives_interval": 10,
    "keepalives_count": 6,
}
SCHEMA_LOCK = "optuna-schema"  # held while a worker creates Optuna's tables (see open)
# The server's own words when it is restarting: SQLSTATEs admin_shutdown, crash_shutdown,
# cannot_connect_now, and the text libpq gives for the last at connect time ("the database
# system is starting up", "... shutting down", "... in recovery mode").
RESTARTING_STATES = ("57P01", "57P02", "57P03")
RESTARTING_TEXT = "the database system is"
UP_SECONDS = "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())"  # since a restart
KEEP_SECONDS = 2.0  # a held lock's connection is checked this often (and the lock taken back)
HEAD_START_SECONDS = 10.0  # a waiter whose connection was cut waits this long before asking again
log = logging.getLogger(__name__)


class PostgresStorage(PatientStorage):
    """The study's Optuna storage on PostgreSQL: no trial is stale while the server has been up
    for less than the grace period (after a restart every heartbeat is old, the live workers'
    too; a killed worker's trial is failed one grace period later)."""

    @retried
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        if not stale:
            return stale
        grace = self.grace_period or 2 * self.heartbeat_interval
        with self.engine.connect() as conn:
            up = conn.execute(sqlalchemy.text(UP_SECONDS)).scalar()
        return stale if float(up) > grace else []


class PostgresBackend(DatabaseBackend):
    """``postgresql+psycopg://user@host/db`` (``postgresql:`` and ``postgres:`` too)."""

    engine_kwargs = {"connect_args": PG_CONNECT_ARGS}
    storage_class = PostgresStorage
    answered = False  # the server answered while the storage opened (see restarting)

    @classmethod
    def accepts(cls, url: str) -> bool:
        return url.startswith(("postgresql:", "postgresql+", "postgres:"))

    def open(self, heartbeat: tuple[int, int]) -> optuna.storages.BaseStorage:
        """Workers opening a fresh database at once take turns creating Optuna's tables (one
        would otherwise die on ``DuplicateTable``)."""
        with advisory_lock(self.engine(), SCHEMA_LOCK, reconnect_seconds=0):  # see restarting
            self.answered = True
            return super().open(heartbeat)

    def engine(self) -> sqlalchemy.Engine:
        """An engine without a pool: each connection ends when it is closed (a lock with it)."""
        return sqlalchemy.create_engine(self.url, poolclass=NullPool, connect_args=PG_CONNECT_ARGS)

    def locks(self, namespace: str) -> AdvisoryLocks:
        return AdvisoryLocks(self.engine(), namespace, self.reconnect_seconds)

    def restarting(self, err: BaseException | None) -> bool:
        """The server went away after it answered, cut the connection, or says it is starting up
        or shutting down. (A first connection refused is not waited for: the URL may be wrong;
        the refusal says both.)"""
        if self.answered and is_lost(err):
            return True
        while err is not None:
            if (
                getattr(err, "connection_invalidated", False)
                or getattr(err, "sqlstate", None) in RESTARTING_STATES
                or RESTARTING_TEXT in str(err)
            ):
                return True
            err = err.__cause__
        return False

    def refusal(self, err: BaseException) -> ValueError:
        if is_lost(err):
            return ValueError(
                f"'study.storage' {self.shown!r}: the PostgreSQL server did not answer "
                f"({reason(err)}); check the host, port, user and database in the URL, or, if "
                f"the server is down or restarting, run the same command again once it is up"
            )
        return super().refusal(err)


def _lock_key(name: str) -> int:
    """A signed 64-bit key for ``name`` (PostgreSQL's advisory locks are keyed by bigint)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _connect(engine: sqlalchemy.Engine) -> sqlalchemy.Connection:
    """A connection of a lock's own, with no server timeout that could end a wait for a lock,
    or a lock held for hours (idle_session_timeout exists from PostgreSQL 14 on)."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        settings = ["statement_timeout"]
        if (conn.dialect.server_version_info or (0,)) >= (14,):
            settings.append("idle_session_timeout")
        for setting in settings:
            conn.execute(sqlalchemy.text("SELECT set_config(:name, '0', false)"), {"name": setting})
    except BaseException:
        _close(conn)
        raise
    return conn


def _close(conn: sqlalchemy.Connection) -> None:
    with contextlib.suppress(sqlalchemy.exc.DBAPIError):
        conn.close()


def _take(engine, name: str, wait: bool, reconnect_seconds: float):
    """A connection that holds the lock ``name``, or None when ``wait`` is False and another
    worker holds it. A wait the server cut (a restart) is taken up again once it answers, after
    :data:`HEAD_START_SECONDS` for the lock's holder to take its lock back; so is any ask while
    the server has been up for less than that (a worker that did not wait, trying the lock of a
    run whose holder is taking it back)."""
    call = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    where = engine.url.render_as_string(hide_password=True)
    cut = False
    while True:
        conn = patiently(lambda: _connect(engine), reconnect_seconds, where)
        try:
            up = float(conn.execute(sqlalchemy.text(UP_SECONDS)).scalar())
            if cut or up < HEAD_START_SECONDS:
                time.sleep(HEAD_START_SECONDS if cut else HEAD_START_SECONDS - up)
            held = conn.execute(sqlalchemy.text(f"SELECT {call}(:key)"), {"key": _lock_key(name)})
            held = wait or bool(held.scalar())
        except sqlalchemy.exc.DBAPIError as err:
            _close(conn)
            if not is_lost(err):
                raise
            log.warning("the wait for the lock %r was cut (%s); waiting again once the study's "
                        "database answers", name, reason(err))  # fmt: skip
            cut = True
            continue
        if held:
            return conn
        _close(conn)
        return None


class _Held:
    """A lock this process holds on ``conn``: a thread checks the connection every
    :data:`KEEP_SECONDS` and, once a restart has cut it, takes the lock back on a new one as soon
    as the server answers (or, should another worker have taken it first, says so)."""

    def __init__(self, engine: sqlalchemy.Engine, name: str, conn: sqlalchemy.Connection):
        self.engine, self.name, self.conn = engine, name, conn
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.keep, name=f"lock {name}", daemon=True)
        self.thread.start()

    def keep(self) -> None:
        while not self.done.wait(KEEP_SECONDS):
            try:
                if self.conn is not None:
                    self.conn.execute(sqlalchemy.text("SELECT 1"))
                elif not self.take_back():
                    return
            except Exception as err:  # noqa: BLE001  (the server went away: try again)
                if self.conn is not None:
                    _close(self.conn)
                    self.conn = None
                    log.warning("the lock %r was lost with its connection to the study's "
                                "database (%s); taking it back once the server answers",
                                self.name, reason(err))  # fmt: skip

    def take_back(self) -> bool:
        """Take the lock again on a new connection; False when another worker holds it."""
        conn = _connect(self.engine)
        try:
            held = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"),
                                {"key": _lock_key(self.name)}).scalar()  # fmt: skip
        except BaseException:
            _close(conn)
            raise
        if not held:
            _close(conn)
            log.warning("the lock %r was lost with its connection to the study's database, and "
                        "another worker holds it now: it may do the same work (its result is the "
                        "same run's)", self.name)  # fmt: skip
            return False
        self.conn = conn
        log.warning("the lock %r is held again", self.name)
        return True

    def release(self) -> None:
        self.done.set()
        self.thread.join()
        if self.conn is not None:
            with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                self.conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                  {"key": _lock_key(self.name)})  # fmt: skip
            _close(self.conn)


@contextlib.contextmanager
def advisory_lock(
    engine: sqlalchemy.Engine,
    name: str,
    wait: bool = True,
    reconnect_seconds: float = RECONNECT_SECONDS,
) -> Iterator[bool]:
    """A PostgreSQL session advisory lock on ``name``, on a connection of its own, so the server
    releases it when this process ends, however it ends. Yields whether it is held (always, when
    ``wait``). A server that went away is waited for up to ``reconnect_seconds`` (then
    :class:`~.reconnect.StorageLost`); a lock it cut is taken back (:class:`_Held`)."""
    conn = _take(engine, name, wait, reconnect_seconds)
    if conn is None:
        yield False
        return
    held = _Held(engine, name, conn)
    try:
        yield True
    finally:
        held.release()


class AdvisoryLocks:
    """Locks for workers anywhere: PostgreSQL advisory locks in the study's database."""

    def __init__(self, engine: sqlalchemy.Engine, namespace: str, reconnect_seconds: float) -> None:
        self.engine, self.namespace = engine, namespace
        self.reconnect_seconds = reconnect_seconds

    def hold(self, name: str, wait: bool = True):
        """A context that holds the lock ``name`` (yields True), or, with ``wait=False`` and
        another worker holding it, holds nothing (yields False)."""
        return advisory_lock(self.engine, f"{self.namespace}/{name}", wait,
                             self.reconnect_seconds)  # fmt: skip
