"""What a run hands whoever started it: a :class:`RunResult`, the one record a study reads of a run
(its storage keeps it as JSON, its report reads the fields by name)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class RunResult:
    """One run's outcome. ``val_*`` and ``key_recall`` are the last epoch's (None before the first
    epoch; ``key_recall`` only on data with key patches); ``test_*`` are read once, after the last
    epoch, on the test split nothing selects on (None when the run did not finish or the data has
    no test split). ``lr_mass`` is each curriculum phase's share of the model's learning-rate
    mass (the sum of its per-step factors); ``marginal_error`` a Sinkhorn-based orderer's mean
    marginal error at its final temperature (None for others). ``order`` is a global orderer's
    final order, ``example_order`` a per-image orderer's order of the first validation image
    (each None otherwise). ``failed`` is set, and the metrics None, when the run ended with an
    error a study records as final (see :data:`diffsort_reorder.study.search.TRIAL_ERRORS`)."""

    seed: int
    method: str = ""
    backbone: str = ""
    data: str = ""
    val_acc: float | None = None
    best_val_acc: float | None = None
    val_loss: float | None = None
    key_recall: float | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    lr_mass: dict[str, float] | None = None
    marginal_error: float | None = None
    train_seconds: float = 0.0
    steps: int = 0
    epochs: int = 0
    finished: bool = False
    world_size: int = 1
    grid: list[int] | None = None
    key_patches: list[int] | None = None  # planted data: the key patches, to mark in drawings
    order: list[int] | None = None
    example_order: list[int] | None = None
    output_dir: str = ""
    code_version: str | None = None
    wall_seconds: float = 0.0  # the whole run as its caller timed it (a study's seed runs)
    failed: str | None = None  # "<error type>: <message>"

    @classmethod
    def failure(cls, seed: int, err: BaseException) -> RunResult:
        """The record of a run that ended with ``err``."""
        return cls(seed=seed, failed=f"{type(err).__name__}: {err}")

    @property
    def ok(self) -> bool:
        return self.failed is None

    def metric(self, name: str) -> float:
        """The metric a study ranks by (``val_acc`` or ``best_val_acc``)."""
        return getattr(self, name)

    def to_json(self) -> dict:
        """A dict of plain values (JSON, Optuna user attributes); ``failed`` only when set, as
        earlier versions, which share a storage's records, tell a failed run by that key."""
        data = dataclasses.asdict(self)
        if data["failed"] is None:
            del data["failed"]
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunResult:
        """The result ``to_json`` gave; keys an older version wrote and this one lacks are
        ignored, fields it did not write take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
