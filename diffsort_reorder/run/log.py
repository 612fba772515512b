"""TensorBoard logging of one run: scalars, the order drawn over the grid, the soft matrix, and the
run's hyper-parameters with its final metrics (in the run's own directory, ``run_name="."``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from ..plotting import order_image


def flatten_config(cfg: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; TensorBoard's hparams take scalars and strings only, so
    ``None`` is dropped and lists become strings."""
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = str(list(value))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


class RunLogger:
    """Writes into ``log_dir``; with ``log_dir=None`` (ranks other than 0) it writes nothing."""

    def __init__(self, log_dir: str | Path | None, grid: tuple[int, int]) -> None:
        self.writer = None if log_dir is None else SummaryWriter(log_dir=str(log_dir))
        self.grid = grid

    def scalars(self, step: int, values: dict[str, float | torch.Tensor]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            if math.isfinite(value):
                self.writer.add_scalar(name, value, step)

    def order(
        self,
        step: int,
        order: torch.Tensor,
        title: str,
        marks: list[int] | None = None,
        window: int | None = None,
    ) -> None:
        """The order as a slot map; ``marks`` (key patches) framed, the last ``window`` slots
        dotted."""
        if self.writer is None:
            return
        image = order_image(order, *self.grid, title=title, marks=marks, window=window)
        self.writer.add_image("order", image, step)

    def soft_matrix(self, step: int, P: torch.Tensor) -> None:
        """One soft permutation ``(N, N)`` as a grey image, scaled into [0, 1]."""
        if self.writer is None:
            return
        P = P.detach().float().cpu()
        self.writer.add_image("soft_permutation", (P / P.max().clamp_min(1e-12))[None], step)

    def hparams(self, cfg: dict, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        self.writer.add_hparams(flatten_config(cfg), metrics, run_name=".")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
