"""Storages in one file, for the workers of one machine: SQLite and Optuna's journal files.
Their locks are ``fcntl`` locks in a folder beside the file."""

from __future__ import annotations

from pathlib import Path

import optuna

from .base import Backend, DatabaseBackend, FileLocks

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


class SQLiteBackend(DatabaseBackend):
    """``sqlite:///<path>``: one worker (SQLite serialises writers badly across processes)."""

    @classmethod
    def accepts(cls, url: str) -> bool:
        return url.startswith("sqlite:///")

    def locks(self, namespace: str) -> FileLocks:
        path = Path(self.url.removeprefix("sqlite:///"))
        return FileLocks(path.with_name(path.name + ".locks") / namespace)


class JournalBackend(Backend):
    """A journal file (``*.log``, ``*.jsonl``, ``*.journal`` or ``journal:<path>``): the workers
    of one machine. Journals keep no heartbeats, so a killed worker's trial stays RUNNING."""

    @classmethod
    def accepts(cls, url: str) -> bool:
        return url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES)

    @property
    def path(self) -> Path:
        return Path(self.url.removeprefix("journal:"))

    @property
    def shown(self) -> str:
        return self.url

    def open(self, heartbeat: tuple[int, int]) -> optuna.storages.BaseStorage:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(self.path))
        return optuna.storages.JournalStorage(backend)

    def locks(self, namespace: str) -> FileLocks:
        return FileLocks(self.path.with_name(self.path.name + ".locks") / namespace)
