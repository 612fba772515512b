"""A run's folder (``output_dir``) and the files in it, each written atomically:

- ``config.yaml``: the resolved config (what ran);
- ``run.json``: the code version that ran it;
- ``checkpoint.pt``: the state after the last finished epoch (a re-run resumes from it), and
  ``checkpoint.prev.pt``, the one before: a truncated or damaged checkpoint (a full disk, a bad
  copy) is skipped for it, with a warning, or the run starts again when neither reads;
- ``result.json``: the :class:`RunResult`, once the run ends.

Checkpoints load with torch's weights-only unpickler (:func:`~diffsort_reorder.files.load`): a
checkpoint holds tensors and plain values only, so a crafted ``checkpoint.pt`` cannot run code on
resume; it is refused in one line. Checkpoints written before this format (numpy arrays in their
random state) still load: numpy's array reconstruction is allowed for them, nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..config import same_config, to_yaml
from ..files import CorruptFileError, UnsafeFileError, load, save_atomic, write_json, write_text
from .result import RunResult

log = logging.getLogger(__name__)
# What older checkpoints' numpy random state needs (a uint32 array), and nothing more: the
# function that rebuilds an array (numpy's own pickle names it), the array and its dtype.
LEGACY_GLOBALS = (np.zeros(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32)))


class RefusedCheckpoint(ValueError):
    """A checkpoint this run does not resume from: another config's, or one that could run code
    (its message says what to do)."""


class RunDir:
    """The files of the run whose ``output_dir`` is ``path``."""

    CONFIG, RECORD, CHECKPOINT, RESULT = "config.yaml", "run.json", "checkpoint.pt", "result.json"
    PREVIOUS = "checkpoint.prev.pt"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.unreadable: set[Path] = set()  # checkpoints found damaged: never kept as previous

    def file(self, name: str) -> Path:
        return self.path / name

    # --- what ran
    def write_config(self, cfg: DictConfig, version: str, threads: int | None = None) -> None:
        """Record the config, the code ``version`` and the CPU ``threads`` the run used (before
        the first epoch)."""
        write_text(self.file(self.CONFIG), to_yaml(cfg))
        write_json(self.file(self.RECORD), {"code_version": version, "threads": threads})

    def holds_config(self, cfg: DictConfig) -> bool:
        """Whether the folder holds no config or ``cfg``'s (a damaged one is another's)."""
        path = self.file(self.CONFIG)
        if not path.exists():
            return True
        text = path.read_text(errors="replace")
        if text == to_yaml(cfg):
            return True
        try:  # the same run, up to its runtime keys (threads, progress, ...)?
            saved = OmegaConf.to_container(OmegaConf.create(text))
        except Exception:  # noqa: BLE001  (a damaged file: YAML and OmegaConf errors alike)
            return False
        return isinstance(saved, dict) and same_config(
            saved, OmegaConf.to_container(cfg, resolve=True)
        )

    def clear(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    # --- checkpoints
    def has_checkpoint(self) -> bool:
        return self.file(self.CHECKPOINT).exists() or self.file(self.PREVIOUS).exists()

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` as the checkpoint; the last one (when it read) becomes the previous."""
        path = self.file(self.CHECKPOINT)
        if path.exists() and path not in self.unreadable:
            os.replace(path, self.file(self.PREVIOUS))
        save_atomic(state, path)
        self.unreadable.discard(path)

    def load_checkpoint(self, resolved: dict) -> dict | None:
        """The newest checkpoint that reads; None (the run starts again) when none does. A
        damaged one is skipped with a warning. Raises :class:`RefusedCheckpoint` for one that
        another config (than ``resolved``) wrote, or that holds objects no checkpoint holds (a
        crafted pickle, never unpickled)."""
        for name in (self.CHECKPOINT, self.PREVIOUS):
            path = self.file(name)
            saved = self._read_checkpoint(path) if path.exists() else None
            if saved is None:
                continue
            if not same_config(saved["config"], resolved):
                raise RefusedCheckpoint(
                    f"{str(path)!r} was written by a run with another config; use a new "
                    f"output_dir or trainer.resume=false"
                )
            return saved
        log.warning("%s: no checkpoint reads; the run starts again from its first epoch",
                    self.path)  # fmt: skip
        return None

    def _read_checkpoint(self, path: Path) -> dict | None:
        """The checkpoint at ``path``, or None (with a warning) when it does not read."""
        try:
            saved = load(path, LEGACY_GLOBALS)
        except UnsafeFileError as err:
            raise RefusedCheckpoint(
                f"{err}; delete it (or the run folder) to run again from scratch, or re-run with "
                f"trainer.resume=false"
            ) from None
        except CorruptFileError as err:
            self.unreadable.add(path)
            log.warning("%s: skipped (an older checkpoint is used if one reads)", err)
            return None
        if not isinstance(saved, dict) or "config" not in saved:
            self.unreadable.add(path)
            log.warning("%r is not a checkpoint of this suite: skipped", str(path))
            return None
        return saved

    # --- the outcome
    def write_result(self, result: RunResult) -> None:
        write_json(self.file(self.RESULT), result.to_json())

    def finished_result(self) -> RunResult | None:
        """The result of the run that finished here, else None (also, with a warning, when
        ``result.json`` is damaged: the run is then resumed or trained again, and rewrites it)."""
        data = self._read_json(self.RESULT, "the run resumes (or trains again) and rewrites it")
        result = RunResult.from_json(data) if isinstance(data, dict) else None
        if result is None or not result.finished:
            return None
        record = self._read_json(self.RECORD, "the code version is result.json's")
        if isinstance(record, dict) and "code_version" in record:
            result.code_version = record["code_version"]
        return result

    def _read_json(self, name: str, instead: str):
        """The JSON in file ``name``; None when it is absent, or damaged (with a warning that
        says what happens ``instead``)."""
        path = self.file(name)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            log.warning("%r is truncated or damaged (%s): %s", str(path), err, instead)
            return None
