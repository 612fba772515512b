"""A study's seed runs: each method's best config re-run on the study's seeds (paired across
methods), under each protocol. :class:`SeedJob` names one; :func:`train_seed_run` trains it in
this worker's folder, or reuses the run that finished there."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import NamedTuple

from omegaconf import DictConfig

from ..orders.methods import learns_one_order
from ..run.loop import train
from ..run.result import RunResult
from ..run.rundir import RunDir
from .search import TRIAL_ERRORS, learned_order


class SeedJob(NamedTuple):
    """One seed re-run: ``method``'s best ``params`` on ``backbone`` with ``seed``, and for the
    retrain protocol the learned ``order`` it trains on (None: the curriculum)."""

    method: str
    backbone: str
    params: dict
    seed: int
    order: list[int] | None

    @property
    def name(self) -> str:
        """The run's name: ``seed-K`` or ``retrain-seed-K``."""
        return f"seed-{self.seed}" if self.order is None else f"retrain-seed-{self.seed}"

    @property
    def key(self) -> str:
        """The run's record key in the storage: ``backbone/method/name``."""
        return f"{self.backbone}/{self.method}/{self.name}"


def seed_jobs(protocol: str, method: str, backbone: str, best, seeds: list[int]) -> list[SeedJob]:
    """The seed re-runs of ``method`` under ``protocol``: its best trial's (``best``) config
    through the whole curriculum, or (``retrain``, global learned orders) that trial's learned
    order frozen for a fresh model. Fixed orders and per-image methods run the same either way."""
    params = best.params if best is not None else {}
    order = learned_order(best) if protocol == "retrain" and learns_one_order(method) else None
    return [SeedJob(method, backbone, params, seed, order) for seed in seeds]


def train_seed_run(cfg: DictConfig, train: Callable = train) -> tuple[RunResult, bool]:
    """Train the seed run ``cfg`` with ``train`` in this worker's output folder (resuming its
    checkpoint), or reuse the run that finished there but is not in the storage (run by an older
    version, or interrupted before it was recorded). Returns the result and whether it trained.
    A run that fails (:data:`TRIAL_ERRORS`) gives a failed result."""
    folder = RunDir(cfg.output_dir)
    if not folder.holds_config(cfg):  # another best config than last time: start afresh
        folder.clear()
        shutil.rmtree(cfg.trainer.log_dir, ignore_errors=True)
    result = folder.finished_result()
    if result is not None:
        return result, False
    started = time.perf_counter()
    try:
        result = train(cfg)
    except TRIAL_ERRORS as err:
        result = RunResult.failure(cfg.seed, err)
    result.wall_seconds = round(time.perf_counter() - started, 2)
    return result, True
