"""A throwaway PostgreSQL server for the tests, from the machine's own packages.

``initdb`` + ``pg_ctl`` in a temp folder: trust authentication, 127.0.0.1, a free port, no fsync.
``initdb`` refuses to run as root, so as root both run as the ``postgres`` user (Debian's package
creates it) in a folder that user owns. Debian keeps the binaries off PATH, in
``/usr/lib/postgresql/<version>/bin``. Without them the tests that need a server fail and say what
to install (``.ci/run`` installs it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

INSTALL = "install PostgreSQL (Debian: apt-get install postgresql; `bash .ci/run` does)"


def binaries() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest version installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(f"the PostgreSQL tests need initdb and pg_ctl; {INSTALL}")
    return Path(initdb).parent


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in Path(path).parts[-3].split(".") if p.isdigit())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A PostgreSQL server in a temp folder until :meth:`stop`; ``url(db)`` names a database.
    :meth:`shut_down`, :meth:`start` and :meth:`restart` play a server restart."""

    def __init__(self) -> None:
        # Directly in the system's temp folder: pytest's are private to root, and the server
        # (as postgres) must reach its own folder.
        folder = Path(tempfile.mkdtemp(prefix="diffsort-postgres-"))
        self.bin, self.data, self.port = binaries(), folder / "data", free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:  # initdb refuses root: the server runs as postgres
            entry = pwd.getpwnam("postgres")
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync",
                  "-E", "UTF8")  # fmt: skip
        self.folder = folder
        self.start()

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off "
                   f"-c max_connections=200")  # fmt: skip
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "log"), "-w", "start")  # fmt: skip

    def shut_down(self, mode: str = "fast") -> None:
        """Stop the server as an administrator does (``fast``: every session is cut, open
        transactions are rolled back), keeping its data."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_seconds: float = 0.0) -> None:
        """Shut the server down, leave it down for ``down_seconds``, and start it again."""
        self.shut_down()
        time.sleep(down_seconds)
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if done.returncode:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
