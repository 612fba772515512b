"""One backend per kind of ``study.storage`` URL, chosen in one place: what each owns (locks,
heartbeats, the errors that mean the storage went away, the URL as messages show it). The
backends against real servers and files are tested in test_cluster.py and test_study.py."""

import optuna
import pytest
import sqlalchemy

from diffsort_reorder.run.result import RunResult
from diffsort_reorder.study.storage import (
    DatabaseBackend,
    JournalBackend,
    PostgresBackend,
    SQLiteBackend,
    backend_class,
    open_backend,
)
from diffsort_reorder.study.storage.base import FileLocks


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:////tmp/s.db", SQLiteBackend),
        ("/tmp/study.log", JournalBackend),
        ("runs/study.jsonl", JournalBackend),
        ("x.journal", JournalBackend),
        ("journal:/tmp/any-name", JournalBackend),
        ("postgresql+psycopg://u@h/db", PostgresBackend),
        ("postgresql://u@h/db", PostgresBackend),
        ("postgres://u@h/db", PostgresBackend),
        ("mysql+pymysql://u@h/db", DatabaseBackend),
    ],
)
def test_each_url_kind_has_one_backend(url, kind):
    assert backend_class(url) is kind


def test_what_each_kind_owns():
    assert SQLiteBackend.heartbeats and PostgresBackend.heartbeats and DatabaseBackend.heartbeats
    assert not JournalBackend.heartbeats  # Optuna's journals keep none
    assert issubclass(sqlalchemy.exc.OperationalError, PostgresBackend.lost)
    assert JournalBackend.lost == ()


def test_null_storage_is_sqlite_in_the_output_folder_with_file_locks_beside_it(tmp_path):
    backend = open_backend(None, tmp_path / "out")
    assert isinstance(backend, SQLiteBackend)
    assert backend.url == f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}"
    locks = backend.locks("smoke")
    assert isinstance(locks, FileLocks) and locks.folder.parent.name == "study.db.locks"
    with locks.hold("run/a") as held, locks.hold("run/b", wait=False) as other:
        assert held and other


def test_a_journal_opens_without_heartbeats(tmp_path):
    backend = open_backend(str(tmp_path / "j" / "study.log"), tmp_path)
    assert (tmp_path / "j").is_dir() and backend.shown == str(tmp_path / "j" / "study.log")
    with backend.heartbeat(0):  # nothing to beat
        pass
    records = backend.records("s")  # the run records live in the journal too
    records.put("txl/softsort/seed-1", "d1", RunResult(seed=1, val_acc=0.5))
    again = open_backend(str(tmp_path / "j" / "study.log"), tmp_path).records("s")
    assert again.get("txl/softsort/seed-1", "d1").val_acc == 0.5
    assert again.get("txl/softsort/seed-1", "other digest") is None


def test_a_lost_database_is_one_line_without_the_password():
    backend = object.__new__(PostgresBackend)
    backend.url = "postgresql+psycopg://user:secret@db.example/study"
    err = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed\n  the line"))
    line = backend.lost_message(err)
    assert "secret" not in line and "\n" not in line
    assert "server closed the line" in line and "run the same command again" in line


def test_optunas_wrapping_of_a_lost_server_is_recognised_and_one_line():
    """A PostgreSQL restart reaches the workers as Optuna's StorageInternalError (caused by
    SQLAlchemy's OperationalError): a lost storage, said in one line, not a traceback."""
    backend = object.__new__(PostgresBackend)
    backend.url = "postgresql+psycopg://user:secret@db.example/study"
    cause = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("terminating connection"))
    try:
        raise optuna.exceptions.StorageInternalError(
            "An exception is raised during the commit"
        ) from cause
    except optuna.exceptions.StorageInternalError as err:
        assert isinstance(err, PostgresBackend.lost)
        line = backend.lost_message(err)
    assert "terminating connection" in line and "secret" not in line and "\n" not in line
