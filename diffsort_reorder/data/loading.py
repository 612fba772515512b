"""Batches for the training loop: in-memory datasets are sliced, files go through a DataLoader.

The batch order is drawn up front from the loop's generator (one permutation per epoch), and the
DataLoader is handed those batches as they are (``batch_sampler``), so the batches are the same
for any ``num_workers``: workers only decide who decodes which batch, and a DataLoader returns
them in order.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def batch_order(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    rank: int = 0,
    world_size: int = 1,
) -> list[torch.Tensor]:
    """The epoch's batches as index tensors; shuffled by ``generator`` (in order when None).

    With ``world_size`` processes each global batch (drawn as for one process) is cut into
    ``world_size`` equal parts and ``rank`` gets its part. The rule for a last, partial batch: it
    loses its last ``len % world_size`` images for that epoch (at most ``world_size - 1``, other
    ones each epoch), and is left out if fewer than ``world_size`` images remain.
    """
    if not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(
            f"'rank' and 'world_size' should have 0 <= rank < world_size dividing batch_size "
            f"({batch_size}) but got rank={rank}, world_size={world_size}"
        )
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    found = [order[start : start + batch_size] for start in range(0, n, batch_size)]
    if world_size == 1:
        return found
    parts = [(len(idx) // world_size, idx) for idx in found]
    return [idx[rank * part : (rank + 1) * part] for part, idx in parts if part]


def batches(
    dataset,
    batch_size: int,
    generator: torch.Generator | None,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
):
    """``(images (B, C, H, W), labels (B,))`` batches of ``dataset``; shuffled by ``generator``;
    with ``world_size`` processes, this ``rank``'s part of each (see :func:`batch_order`).

    A dataset with ``images`` in memory is sliced (no per-item overhead). Any other dataset is
    read by a :class:`torch.utils.data.DataLoader` with ``num_workers`` worker processes (0: in
    this process) and, on CUDA, ``pin_memory``, each worker keeping two batches in flight.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"'num_workers' should be an int >= 0 but got {num_workers!r}")
    if hasattr(dataset, "images"):  # in memory: slice
        for idx in batch_order(len(dataset), batch_size, generator, rank, world_size):
            yield dataset.images[idx], dataset.labels[idx]
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[
            idx.tolist()
            for idx in batch_order(len(dataset), batch_size, generator, rank, world_size)
        ],
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
    )
    yield from loader
