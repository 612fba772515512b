"""PostgreSQL: a study shared by workers on many machines. Its locks are session advisory locks,
which the server releases the moment their holder's connection ends (a killed worker included),
and a trial's heartbeats let another worker retry a killed worker's trial."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator

import optuna
import sqlalchemy
from sqlalchemy.pool import NullPool

from .base import DatabaseBackend, one_line

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
log = logging.getLogger(__name__)


class PostgresBackend(DatabaseBackend):
    """``postgresql+psycopg://user@host/db`` (``postgresql:`` and ``postgres:`` too)."""

    engine_kwargs = {"connect_args": PG_CONNECT_ARGS}

    @classmethod
    def accepts(cls, url: str) -> bool:
        return url.startswith(("postgresql:", "postgresql+", "postgres:"))

    def open(self, heartbeat: tuple[int, int]) -> optuna.storages.BaseStorage:
        """Workers opening a fresh database at once take turns creating Optuna's tables (one
        would otherwise die on ``DuplicateTable``)."""
        with advisory_lock(self.engine(), SCHEMA_LOCK):
            return super().open(heartbeat)

    def engine(self) -> sqlalchemy.Engine:
        """An engine without a pool: each connection ends when it is closed (a lock with it)."""
        return sqlalchemy.create_engine(self.url, poolclass=NullPool, connect_args=PG_CONNECT_ARGS)

    def locks(self, namespace: str) -> AdvisoryLocks:
        return AdvisoryLocks(self.engine(), namespace)

    def refusal(self, err: BaseException) -> ValueError:
        if isinstance(err, sqlalchemy.exc.OperationalError):
            reason = one_line(err.orig) if err.orig is not None else str(err)
            return ValueError(
                f"'study.storage' {self.shown!r}: the PostgreSQL server did not answer "
                f"({reason}); start it, or check the host, port, user and database in the URL"
            )
        return super().refusal(err)


def _lock_key(name: str) -> int:
    """A signed 64-bit key for ``name`` (PostgreSQL's advisory locks are keyed by bigint)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def advisory_lock(engine: sqlalchemy.Engine, name: str, wait: bool = True) -> Iterator[bool]:
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

    def __init__(self, engine: sqlalchemy.Engine, namespace: str) -> None:
        self.engine, self.namespace = engine, namespace

    def hold(self, name: str, wait: bool = True):
        """A context that holds the lock ``name`` (yields True), or, with ``wait=False`` and
        another worker holding it, holds nothing (yields False)."""
        return advisory_lock(self.engine, f"{self.namespace}/{name}", wait)
