"""Batches for the training loop: in-memory datasets are sliced, files go through a DataLoader.

The batch order is drawn up front from the loop's generator (one permutation per epoch), and the
DataLoader is handed those batches as they are (``batch_sampler``), so the batches are the same
for any ``num_workers``: workers only decide who decodes which batch, and a DataLoader returns
them in order.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def batch_order(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """The epoch's batches as index tensors; shuffled by ``generator`` (in order when None)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


def batches(
    dataset,
    batch_size: int,
    generator: torch.Generator | None,
    num_workers: int = 0,
    pin_memory: bool = False,
):
    """``(images (B, C, H, W), labels (B,))`` batches of ``dataset``; shuffled by ``generator``.

    A dataset with ``images`` in memory is sliced (no per-item overhead). Any other dataset is
    read by a :class:`torch.utils.data.DataLoader` with ``num_workers`` worker processes (0: in
    this process) and, on CUDA, ``pin_memory``, each worker keeping two batches in flight.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"'num_workers' should be an int >= 0 but got {num_workers!r}")
    if hasattr(dataset, "images"):  # in memory: slice
        for idx in batch_order(len(dataset), batch_size, generator):
            yield dataset.images[idx], dataset.labels[idx]
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[idx.tolist() for idx in batch_order(len(dataset), batch_size, generator)],
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
    )
    yield from loader
