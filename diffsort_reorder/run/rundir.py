"""A run's folder (``output_dir``) and the files in it, each written atomically:

- ``config.yaml``: the resolved config (what ran);
- ``run.json``: the code version that ran it;
- ``checkpoint.pt``: the state after the last finished epoch (a re-run resumes from it);
- ``result.json``: the :class:`RunResult`, once the run ends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from ..config import same_config, to_yaml
from ..files import load, save_atomic, write_json, write_text
from .result import RunResult


class RunDir:
    """The files of the run whose ``output_dir`` is ``path``."""

    CONFIG, RECORD, CHECKPOINT, RESULT = "config.yaml", "run.json", "checkpoint.pt", "result.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    # --- what ran
    def write_config(self, cfg: DictConfig, version: str) -> None:
        """Record the config and the code ``version`` (before the first epoch)."""
        write_text(self.file(self.CONFIG), to_yaml(cfg))
        write_json(self.file(self.RECORD), {"code_version": version})

    def holds_config(self, cfg: DictConfig) -> bool:
        """Whether the folder holds no config or ``cfg``'s."""
        path = self.file(self.CONFIG)
        return not path.exists() or path.read_text() == to_yaml(cfg)

    def clear(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)

    # --- checkpoints
    def has_checkpoint(self) -> bool:
        return self.file(self.CHECKPOINT).exists()

    def save_checkpoint(self, state: dict) -> None:
        save_atomic(state, self.file(self.CHECKPOINT))

    def load_checkpoint(self, resolved: dict) -> dict:
        """The checkpoint, refused when another config (``resolved``) wrote it."""
        path = self.file(self.CHECKPOINT)
        saved = load(path)
        if not same_config(saved["config"], resolved):
            raise ValueError(
                f"{str(path)!r} was written by a run with another config; use a new output_dir "
                f"or trainer.resume=false"
            )
        return saved

    # --- the outcome
    def write_result(self, result: RunResult) -> None:
        write_json(self.file(self.RESULT), result.to_json())

    def finished_result(self) -> RunResult | None:
        """The result of the run that finished here, else None."""
        path = self.file(self.RESULT)
        if not path.exists():
            return None
        result = RunResult.from_json(json.loads(path.read_text()))
        if not result.finished:
            return None
        record = self.file(self.RECORD)
        if record.exists():
            result.code_version = json.loads(record.read_text())["code_version"]
        return result
