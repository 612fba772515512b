"""Files that are never half-written: every file the suite writes (a run's config, record, result
and checkpoint; a study's report, CSV and figures; a prior's cache) goes through :func:`atomic`,
which writes a temporary file in the same folder, fsyncs it and renames it over the target. A
reader (or a re-run after a crash) sees the old file or the new one, never a torn one.
:func:`load` reads a torch file back without running code: a crafted pickle is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import torch

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the mode a plain open() would give, for the files made here


@contextlib.contextmanager
def atomic(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` "wb" or "w"); on leaving the
    block it is flushed, fsynced and renamed to ``path``; on an exception it is removed and
    ``path`` keeps what it held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide reports from a group
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, data) -> Path:
    """``data`` as one line of JSON and a newline."""
    return write_text(path, json.dumps(data) + "\n")


def save_atomic(state: dict, path: str | Path) -> Path:
    """``torch.save(state)`` to ``path``, atomically (checkpoints, priors' caches)."""
    with atomic(path, "wb") as f:
        torch.save(state, f)
    return Path(path)


class CorruptFileError(ValueError):
    """A file of the suite's that is truncated, damaged or not what it should be."""


class UnsafeFileError(ValueError):
    """A torch file holding objects that unpickling would build by running code: never loaded."""


def load(path: str | Path, allowed: Iterable = ()) -> dict:
    """What :func:`save_atomic` wrote, on the CPU, read by torch's weights-only unpickler:
    tensors, plain Python values and the classes or functions in ``allowed``. A file that holds
    anything else (a pickle that would run code) raises :class:`UnsafeFileError` before any of it
    is built; a truncated or damaged one :class:`CorruptFileError`. Both name ``path``."""
    path = Path(path)
    with torch.serialization.safe_globals(list(allowed)):
        try:
            # The pickle's globals, read without running it (torch.save's zip files only).
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if not unsafe:
                return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001  (zip reader, pickle scan, tensor records)
            raise CorruptFileError(
                f"{str(path)!r} is truncated or damaged ({_first_line(err)})"
            ) from err
    raise UnsafeFileError(
        f"{str(path)!r} holds objects no file of this suite holds ({', '.join(sorted(unsafe))});"
        f" it was not loaded, as loading it could run code"
    )


def _first_line(err: BaseException) -> str:
    """``err``'s type and first sentence (torch's reader explains at length)."""
    first = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
