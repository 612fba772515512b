"""Where a study keeps its state, and how the workers that share it take turns.

A study's storage (``study.storage``) is the one thing its workers share: Optuna's trials, the
finished seed runs (:class:`RunRecords`) and the locks all go through it, so workers on different
machines need no shared folder (only the same command and the data at the same path, which is
part of every run's config). Each kind of URL has its backend, one object that owns opening the
storage, its locks, its run records, whether trials have heartbeats and which errors mean the
storage went away (:func:`open_backend` picks it):

- :class:`~.files.SQLiteBackend` (the default for one worker, ``<output_dir>/study.db``);
- :class:`~.files.JournalBackend` (``*.log``, ``*.jsonl``, ``*.journal``, ``journal:<path>``) the
  workers of one machine; the locks of both are ``fcntl`` locks in a folder beside the file;
- :class:`~.postgres.PostgresBackend` (``postgresql+psycopg://user@host/db``) a cluster, with
  session advisory locks and trial heartbeats;
- :class:`~.base.DatabaseBackend`: any other SQLAlchemy URL, for the workers of one machine.

A database server that goes away (a restart) is waited for, up to ``study.reconnect_seconds``
(:mod:`.reconnect`); then the worker stops in one line (:class:`StorageLost`).
"""

from __future__ import annotations

from pathlib import Path

from .base import Backend, DatabaseBackend, RunRecords, quiet_experimental, shown
from .files import JournalBackend, SQLiteBackend
from .postgres import PostgresBackend
from .reconnect import RECONNECT_SECONDS, StorageLost

# The first that accepts a URL serves it.
BACKENDS: tuple[type[Backend], ...] = (JournalBackend, PostgresBackend, SQLiteBackend)


def backend_class(url: str) -> type[Backend]:
    """The backend kind that serves ``url``."""
    return next((kind for kind in BACKENDS if kind.accepts(url)), DatabaseBackend)


def default_url(output_dir: Path, jobs: int) -> str:
    """The storage of a study with ``study.storage`` null, in ``output_dir``: the journal file
    ``study.log`` once it exists or for several local workers (``jobs``: SQLite serves one
    process), else the SQLite file ``study.db``. A study begun on SQLite stays there, and is
    refused several workers in one line rather than started afresh."""
    journal, sqlite = output_dir / "study.log", output_dir / "study.db"
    if journal.exists() or (jobs > 1 and not sqlite.exists()):
        return str(journal.resolve())
    if jobs > 1:
        raise ValueError(
            f"'study.jobs' is {jobs}, but this study's storage is the SQLite file {sqlite}, "
            f"which serves one process; run it with study.jobs=1, or give study.storage a "
            f"journal file or a database URL for a new study"
        )
    return f"sqlite:///{sqlite.resolve()}"


def open_backend(
    url: str | None,
    output_dir: Path,
    heartbeat: tuple[int, int] = (10, 30),
    reconnect_seconds: float = RECONNECT_SECONDS,
    jobs: int = 1,
) -> Backend:
    """The open backend of ``study.storage`` (``url``; null: :func:`default_url`, for ``jobs``
    local workers).
    ``heartbeat`` is ``(interval, grace)`` in seconds, where trials have heartbeats: a trial
    whose worker has been silent for ``grace`` is failed, then retried. A database server that
    went away is waited for up to ``reconnect_seconds`` (``study.reconnect_seconds``)."""
    seconds = reconnect_seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(f"'study.reconnect_seconds' should be a number of seconds >= 0 but got "
                         f"{reconnect_seconds!r}")  # fmt: skip
    if url is None:
        output_dir.mkdir(parents=True, exist_ok=True)
        url = default_url(output_dir, jobs)
    return backend_class(str(url))(str(url), output_dir, heartbeat, reconnect_seconds)


__all__ = [
    "BACKENDS",
    "Backend",
    "DatabaseBackend",
    "JournalBackend",
    "PostgresBackend",
    "RunRecords",
    "SQLiteBackend",
    "StorageLost",
    "backend_class",
    "default_url",
    "open_backend",
    "quiet_experimental",
    "shown",
]
