"""Storages in one file, for the workers of one machine: SQLite and Optuna's journal files.
Their locks are ``fcntl`` locks in a folder beside the file.

A journal file is appended to by every worker and read from its start by each. Two faults are
mended here. A worker killed mid-write leaves a torn last line, which Optuna's readers skip but
its next writer appends onto, after which every reader fails: :class:`JournalFile` cuts a torn
last line off before anything is appended (no reader ever applied it). And journals keep no
heartbeats, so a killed worker's trial would stay RUNNING: :class:`TrialLockedJournal` holds a
file lock for each trial its worker runs, which the system frees however the worker ends, and
answers Optuna's heartbeat questions with it (a RUNNING trial whose lock is free is stale), so
:func:`optuna.storages.fail_stale_trials` fails it and the search runs it again."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat  # how Optuna's storages add heartbeats
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from .base import Backend, DatabaseBackend, FileLocks

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
SQLITE_WAIT_SECONDS = 60  # how long a SQLite writer waits for another to let the file go
CHUNK = 1 << 16  # bytes read at a time when looking back for a line's start
log = logging.getLogger(__name__)


class DamagedJournal(OSError):
    """A journal file with a line that is not a record: every reader of it fails. An OSError (a
    fault of the machine's files, as a full disk is): a trial it stops is run again, and the
    command line says it in one line."""

    def __init__(self, path: Path, number: int, err: Exception) -> None:
        super().__init__(
            f"'study.storage' {str(path)!r}: line {number} is not a journal record "
            f"({type(err).__name__}: {' '.join(str(err).split())}): a killed writer's cut-off "
            f"line that another appended onto looks so, and no worker can read past it; restore "
            f"the file from a copy, or start the study on a new file"
        )


def first_bad_line(path: Path) -> tuple[int, Exception] | None:
    """The number (from 1) of the first line of ``path`` that is not a JSON record, and why
    (None: none is); a last line without its newline (torn, or being written) does not count."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return None
            try:
                json.loads(line)
            except ValueError as err:
                return number, err
    return None


def _line_start(f, end: int) -> int:
    """The offset of the line that ends at ``end`` (just after the newline before it)."""
    pos = end
    while pos > 0:
        step = min(CHUNK, pos)
        f.seek(pos - step)
        found = f.read(step).rfind(b"\n")
        if found >= 0:
            return pos - step + found + 1
        pos -= step
    return 0


class JournalFile(JournalFileBackend):
    """Optuna's journal file that never appends onto a torn last line: under Optuna's own lock
    (the one every writer of the file takes), a last line without its newline is cut off first,
    with a warning. A damaged line (not a record) is said in one line (:class:`DamagedJournal`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = JournalFileSymlinkLock(str(path))
        super().__init__(str(path), lock_obj=self.lock)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()

    def mend(self, check_last: bool = False) -> None:
        """Cut a torn last line off (call it holding the lock); with ``check_last``, refuse a
        last line that is complete but not a record (an old writer appended onto a torn one:
        Optuna's readers skip it, and fail on every line written after it)."""
        with open(self.path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            if end == 0:
                return
            f.seek(end - 1)
            if f.read(1) != b"\n":
                keep = _line_start(f, end)
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
                log.warning("study.storage %s: cut off a torn last line (%d bytes: a worker "
                            "killed while writing it; no reader applied it)",
                            self.path, end - keep)  # fmt: skip
                end = keep
            if check_last and end > 0:
                start = _line_start(f, end - 1)
                f.seek(start)
                try:
                    json.loads(f.read(end - start))
                except ValueError as err:
                    f.seek(0)
                    raise DamagedJournal(self.path, f.read(start).count(b"\n") + 1, err) from err

    def append_logs(self, logs: list[dict]) -> None:
        with self.locked():  # as Optuna's append_logs, after mending the end of the file
            self.mend()
            text = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs)
            with open(self.path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def read_logs(self, log_number_from: int) -> Iterator[dict]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as err:  # a line that does not parse, with more lines after it
            bad = first_bad_line(self.path)
            if bad is not None:
                raise DamagedJournal(self.path, *bad) from err
            # None is: a line was read half-written (a torn one cut and written again in the
            # meantime). What was read stands; the next read goes on from there.


class TrialLockedJournal(JournalStorage, BaseHeartbeat):
    """A journal storage whose workers hold a file lock (``trial-<id>.lock`` in ``locks``) on
    each trial they run, from taking it until they finish it; the system frees it when the
    worker ends, however it ends. Optuna's heartbeat protocol reads it: a RUNNING trial whose
    lock can be taken is stale (its worker is dead). Call :func:`optuna.storages.
    fail_stale_trials` where no worker is taking a trial (under the search's lock): one that
    has just taken its trial holds the lock a moment later. ``interval`` is the heartbeat
    interval Optuna's own ``optimize`` would beat at (a lock needs no beat)."""

    def __init__(self, backend: JournalFile, locks: FileLocks, interval: int) -> None:
        self.locks, self.interval = locks, interval
        self.held: dict[int, contextlib.ExitStack] = {}
        super().__init__(backend)

    def hold(self, trial_id: int) -> None:
        if trial_id not in self.held:
            stack = contextlib.ExitStack()
            stack.enter_context(self.locks.hold(f"trial-{trial_id}"))
            self.held[trial_id] = stack

    def release(self, trial_id: int) -> None:
        stack = self.held.pop(trial_id, None)
        if stack is not None:
            stack.close()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is None or template_trial.state == TrialState.RUNNING:
            self.hold(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        try:
            taken = super().set_trial_state_values(trial_id, state, values)
        finally:
            if state.is_finished():  # told, or failed by another worker already
                self.release(trial_id)
        if state == TrialState.RUNNING and taken:  # this worker popped a waiting trial
            self.hold(trial_id)
        return taken

    def is_alive(self, trial_id: int) -> bool:
        if trial_id in self.held:
            return True
        with self.locks.hold(f"trial-{trial_id}", wait=False) as free:
            return not free

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running if not self.is_alive(t._trial_id)]

    def record_heartbeat(self, trial_id: int) -> None:
        self.hold(trial_id)

    def get_heartbeat_interval(self) -> int:
        return self.interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return None


class SQLiteBackend(DatabaseBackend):
    """``sqlite:///<path>``: one worker (SQLite locks the whole file for each write, and Optuna's
    RDB storage on it is not made for several processes: a journal file serves those). A write
    waits up to :data:`SQLITE_WAIT_SECONDS` for the file, not sqlite3's 5 s, should something
    else hold it (a reader, a report redrawn beside the study)."""

    engine_kwargs = {"connect_args": {"timeout": SQLITE_WAIT_SECONDS}}

    @classmethod
    def accepts(cls, url: str) -> bool:
        return url.startswith("sqlite:///")

    def locks(self, namespace: str) -> FileLocks:
        path = Path(self.url.removeprefix("sqlite:///"))
        return FileLocks(path.with_name(path.name + ".locks") / namespace)


class JournalBackend(Backend):
    """A journal file (``*.log``, ``*.jsonl``, ``*.journal`` or ``journal:<path>``): the workers
    of one machine. Its trials have no beats to record (:attr:`heartbeats` is False): a file
    lock each tells a killed worker's trial instead (:class:`TrialLockedJournal`), and a torn
    last line is cut off before anything is appended (:class:`JournalFile`)."""

    @classmethod
    def accepts(cls, url: str) -> bool:
        return url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES)

    @property
    def path(self) -> Path:
        return Path(self.url.removeprefix("journal:"))

    @property
    def shown(self) -> str:
        return self.url

    @property
    def folder(self) -> Path:
        """Where the locks live: a folder beside the file."""
        return self.path.with_name(self.path.name + ".locks")

    def open(self, heartbeat: tuple[int, int]) -> optuna.storages.BaseStorage:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        journal = JournalFile(self.path)
        with journal.locked():  # before anything is appended: a torn line cut, a damaged refused
            journal.mend(check_last=True)
        return TrialLockedJournal(journal, FileLocks(self.folder), heartbeat[0])

    def locks(self, namespace: str) -> FileLocks:
        return FileLocks(self.folder / namespace)

    def refusal(self, err: BaseException) -> ValueError:
        if isinstance(err, DamagedJournal):
            return ValueError(str(err))
        return super().refusal(err)
