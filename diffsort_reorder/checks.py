"""Checks of single config values: each returns the value or refuses it with a ``ValueError``
that names the key, the value and what is accepted."""

from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(key: str, value, minimum: int = 0) -> int:
    """An integer >= ``minimum``."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"'{key}' should be an integer >= {minimum} but got {value!r}")
    return int(value)


def check_number(key: str, value, minimum: float = 0.0, strict: bool = True) -> float:
    """A finite number > ``minimum`` (>= when not ``strict``)."""
    ok = is_real(value) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        bound = f"{'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"'{key}' should be a number {bound} but got {value!r}")
    return float(value)


def check_bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"'{key}' should be true or false but got {value!r}")
    return value


def check_choice(key: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(
            f"'{key}' should be one of {', '.join(map(str, choices))} but got {value!r}"
        )
    return value


def check_clip(key: str, value) -> float:
    """A max gradient norm: a number > 0, or null (no clip: inf)."""
    if value is None:
        return math.inf
    if not is_real(value) or not value > 0:
        raise ValueError(f"'{key}' should be a number > 0 or null (no clip) but got {value!r}")
    return float(value)


def check_path(key: str, value) -> str:
    """A non-empty path."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' should be a path but got {value!r}")
    return value


def check_writable(key: str, value, file: bool = False) -> str:
    """A folder (``file``: a file's path) the suite can write into, checked before any work:
    it is a folder or does not exist yet, and its nearest existing ancestor is a folder this
    process may write to. Nothing is created."""
    check_path(key, value)
    path = Path(value).expanduser().absolute()
    if path.exists() and path.is_dir() == file:
        want = "a file, not a folder" if file else "a folder, not a file"
        raise ValueError(f"'{key}' should be {want} but got {value!r}")
    folder = next(p for p in (path.parent if file else path, *path.parents) if p.exists())
    if not folder.is_dir():
        raise ValueError(
            f"'{key}' should be a path you can write to but got {value!r}, which lies under the "
            f"file {str(folder)!r}"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"'{key}' should be a path you can write to but got {value!r}: {str(folder)!r} is "
            f"not writable"
        )
    return value


PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(key: str, value) -> str:
    """A plain name, for a value that becomes a folder or file name: letters, digits, ``-``,
    ``_`` and ``.``, not ``.`` or ``..`` (so it never leaves the folder it is put in)."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"'{key}' should be a plain name (letters, digits, '-', '_', '.'; not '.' or '..'; "
            f"it names folders) but got {value!r}"
        )
    return value


def check_complete(cfg: DictConfig) -> None:
    """Every mandatory value (``???`` in a config file) is given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"'{missing[0]}' has no value; give it on the command line: {missing[0]}=..."
        )
