"""A study's seed runs: each method's best config re-run on the study's seeds (paired across
methods): the curriculum on every seed, then (retrain) a fresh model on each seed's own learned
order. :class:`SeedJob` names one; :func:`train_seed_run` trains it in this worker's folder, or
reuses the run that finished there."""

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
from .search import TRIAL_ERRORS, is_final


class SeedJob(NamedTuple):
    """One seed run: ``method``'s best ``params`` on ``backbone`` with ``seed``; for the retrain
    protocol, the ``order`` that seed's own curriculum run learned (None: a curriculum run) and
    the key of that run (``order_source``)."""

    method: str
    backbone: str
    params: dict
    seed: int
    order: list[int] | None = None
    order_source: str | None = None

    @property
    def name(self) -> str:
        """The run's name: ``seed-K`` or ``retrain-seed-K``."""
        return f"seed-{self.seed}" if self.order is None else f"retrain-seed-{self.seed}"

    @property
    def key(self) -> str:
        """The run's record key in the storage: ``backbone/method/name``."""
        return f"{self.backbone}/{self.method}/{self.name}"


def seed_jobs(method: str, backbone: str, best, seeds: list[int]) -> list[SeedJob]:
    """The curriculum runs of ``method``: its best trial's (``best``) config through the whole
    curriculum on every seed. Each learns its own order (a learned method) or runs its fixed one;
    the retrain protocol then trains a fresh model on each seed's own order (:func:`retrain_job`),
    so that an interval covers the estimator's variation across seeds, not one order's."""
    params = best.params if best is not None else {}
    return [SeedJob(method, backbone, params, seed) for seed in seeds]


def retrain_job(learned: SeedJob, result: RunResult | None) -> SeedJob | RunResult | None:
    """The retrain run of ``learned`` (a curriculum run whose ``result`` is known): a fresh model
    on the order it learned, the same seed. A method with no single order (fixed, per-image)
    retrains nothing: its curriculum run is its retrain result. A failed curriculum run gives a
    failed result; None while ``result`` is not known yet."""
    if not learns_one_order(learned.method) or result is None:
        return result
    if not result.ok or result.order is None:
        why = result.failed or "no order recorded"
        return RunResult(seed=learned.seed, failed=f"its curriculum run {learned.name}: {why}")
    return learned._replace(order=list(result.order), order_source=learned.key)


def study_seeds(s) -> list[int]:
    """The seeds every method replicates its pipeline on: ``study.seed + 1 .. + study.seeds``."""
    return [s.seed + k for k in range(1, s.seeds + 1)]


def task_seed_of(task_seeds, seeds: list[int], seed: int) -> int | None:
    """The planted task (key placement) seed ``seed`` runs on: ``task_seeds`` in turn over
    ``seeds`` (the search's seed, not among them, takes the first); None without a list."""
    if not task_seeds:
        return None
    index = seeds.index(seed) if seed in seeds else 0
    return int(task_seeds[index % len(task_seeds)])


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
        if not is_final(err):
            raise  # a corrupt file, not the run's failure: not recorded, trained again
        result = RunResult.failure(cfg.seed, err)
    result.wall_seconds = round(time.perf_counter() - started, 2)
    return result, True
