"""Batches for the training loop: in-memory datasets are sliced, the others go through a DataLoader.

The batch order is drawn up front from the loop's generator (one permutation per epoch) and handed
to the DataLoader as it is (a batch sampler), so the batches are the same for any ``num_workers``:
workers only decide who decodes which image (:mod:`.slots`), and a DataLoader returns the batches
in order. Random transforms (a training flip) draw from a seed the loader takes from the same
generator, mixed with the image's index, never from a worker's own random state.

A :class:`BatchLoader` keeps one DataLoader, and so its worker processes, for a whole run: each
epoch sets the sampler's batches and iterates the same loader again.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from .base import ImageDataset, LazyImageDataset
from .slots import EpochBatches, SharedEpoch

PREFETCH_BATCHES = 2  # batches in flight per worker (DataLoader's prefetch_factor)
Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W), labels (B,)


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


def shard_bounds(n: int, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """``rank``'s contiguous part ``[lo, hi)`` of ``range(n)``: the ``world_size`` parts cover
    every index once, their sizes at most one apart."""
    return rank * n // world_size, (rank + 1) * n // world_size


def eval_order(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """``rank``'s part of an evaluation: its :func:`shard_bounds` in order, in batches of
    ``batch_size`` (every image once over the ranks, none left out)."""
    if not 0 <= rank < world_size:
        raise ValueError(
            f"'rank' and 'world_size' should have 0 <= rank < world_size but got rank={rank}, "
            f"world_size={world_size}"
        )
    lo, hi = shard_bounds(n, rank, world_size)
    return list(torch.arange(lo, hi).split(batch_size)) if hi > lo else []  # no empty batch


def epoch_seed(generator: torch.Generator | None) -> int | None:
    """The seed of the epoch's random transforms, drawn from ``generator`` after the order (None
    when unshuffled: no random transforms)."""
    if generator is None:
        return None
    return int(torch.randint(2**62, (), generator=generator))


def _as_is(batch):
    return batch  # the workers put the batch in its slot: the DataLoader returns its number


@contextlib.contextmanager
def _one_thread(active: bool):
    """Run torch ops in one thread while ``active``. Where worker processes keep the cores busy,
    a multi-threaded op in the main process waits at its barrier for a descheduled peer thread,
    spinning: measured on 2 cores with 2 workers, the batch's conversion to float took 3x the CPU
    time with 2 threads that it takes with one."""
    threads = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if active:
            torch.set_num_threads(threads)


def _pin(slots: torch.Tensor) -> None:
    """Page-lock the shared slots in place (what ``pin_memory`` does to a copy), so a batch goes
    to the GPU by DMA; portable, as torch's checkpoint stager registers shared memory."""
    code = int(torch.cuda.cudart().cudaHostRegister(slots.data_ptr(), slots.numel(), 1))
    if code != 0:
        raise RuntimeError(
            f"pin_memory: CUDA could not page-lock the loader's {slots.numel() / 2**20:.0f} MB of "
            f"shared slots (cudaError {code}); the limit on locked memory (ulimit -l) may be low"
        )


def check_workers(num_workers) -> int:
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"'num_workers' should be an int >= 0 but got {num_workers!r}")
    return num_workers


class BatchLoader:
    """``(images (B, C, H, W), labels (B,))`` batches of ``dataset``, epoch after epoch.

    A dataset with ``images`` in memory is sliced (no per-item overhead; the batches stay on the
    CPU). Any other dataset (a :class:`~diffsort_reorder.data.base.LazyImageDataset`) is read by
    one :class:`torch.utils.data.DataLoader` with ``num_workers`` worker processes (0: in this
    process) that stay alive across epochs until :meth:`close`, ``pin_memory`` on CUDA; its
    uint8 batches are moved to ``device`` (None: the CPU) and made float there.

    With ``world_size`` processes, ``split="batches"`` (training) gives ``rank`` its part of every
    global batch (:func:`batch_order`) and ``split="set"`` (evaluation, unshuffled) its
    contiguous part of the set in whole batches (:func:`eval_order`).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        split: str = "batches",
    ) -> None:
        if split not in ("batches", "set"):
            raise ValueError(f"'split' should be 'batches' or 'set' but got {split!r}")
        if not isinstance(dataset, (ImageDataset, LazyImageDataset)):
            raise TypeError(
                f"'dataset' should be an ImageDataset (in memory) or a LazyImageDataset but got "
                f"{type(dataset).__name__}"
            )
        self.dataset, self.batch_size = dataset, batch_size
        self.shard = (rank, world_size)  # this process's part (batch_order, eval_order)
        self.split = split
        self.num_workers = check_workers(num_workers)
        self.pin_memory = pin_memory
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._sampler: EpochBatches | None = None
        self._loader: DataLoader | None = None
        self._slots: torch.Tensor | None = None
        self._pinned = False
        self._epochs = 0  # epochs begun: an older epoch's iterator stops reading

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            workers = self.num_workers
            # One slot per batch in flight, and one the main process reads: a slot is written
            # again only after the batch it held was converted (batches come back in order).
            count = workers * PREFETCH_BATCHES + 1
            item = self.dataset.raw_item(0)[0]  # (C, H, W) uint8 as raw() makes every item
            part = self.batch_size // self.shard[1] if self.split == "batches" else self.batch_size
            shape = (count, part, *item.shape)
            self._slots = torch.empty(shape, dtype=torch.uint8).share_memory_()
            context = multiprocessing.get_context()  # what a DataLoader uses by default
            items = SharedEpoch(
                self.dataset,
                self._slots,
                max_batches=-(-len(self.dataset) // self.batch_size),
                workers=workers,
                lock=context.Lock(),
            )
            self._sampler = EpochBatches(items)
            self._loader = DataLoader(
                items,
                batch_sampler=self._sampler,
                collate_fn=_as_is,
                num_workers=workers,
                multiprocessing_context=context if workers else None,
                persistent_workers=workers > 0,
                prefetch_factor=PREFETCH_BATCHES if workers else None,
                # Its own generator: a DataLoader draws a seed for its workers each time it makes
                # an iterator (every epoch with 0 workers, once with persistent ones), from the
                # global one otherwise, and the run's random draws would depend on num_workers.
                generator=torch.Generator().manual_seed(0),
            )
        return self._loader

    def epoch(self, generator: torch.Generator | None) -> Iterator[Batch]:
        """One epoch's batches, shuffled by ``generator`` (in order, unaugmented when None)."""
        if self.split == "set":
            if generator is not None:
                raise ValueError("a BatchLoader with split='set' reads in order: generator=None")
            order = eval_order(len(self.dataset), self.batch_size, *self.shard)
        else:
            order = batch_order(len(self.dataset), self.batch_size, generator, *self.shard)
        if self.dataset.in_memory:  # slice
            for idx in order:
                yield self.dataset.images[idx], self.dataset.labels[idx]
            return
        loader = self._dataloader()
        count = len(self._slots)
        self._sampler.order, self._sampler.seed = order, epoch_seed(generator)
        self._epochs += 1
        epoch = self._epochs
        numbers = iter(loader)  # made after the epoch is set: it reads it now
        if self.pin_memory and not self._pinned:
            # Once the workers run: forked ones share the slots' pages however a driver marks a
            # page-locked range (some keep such ranges out of a fork's child).
            _pin(self._slots)
            self._pinned = True
        busy_cores = self.num_workers > 0 and self.device.type == "cpu"
        while True:
            if epoch != self._epochs:  # the loader's shared state now holds a newer epoch
                raise RuntimeError(
                    "a newer epoch of this BatchLoader has begun: an epoch's batches are read "
                    "before the next epoch begins (or the older one is dropped)"
                )
            b = next(numbers, None)
            if b is None:
                return
            idx = order[b]
            images = self._slots[b % count, : len(idx)].to(self.device)  # (B, C, H, W) uint8
            with _one_thread(busy_cores):
                images = self.dataset.to_float(images)  # a new tensor: the slot is free again
            yield images, self.dataset.labels[idx].to(self.device)

    def close(self) -> None:
        """Stop the worker processes (a later epoch starts new ones)."""
        iterator = getattr(self._loader, "_iterator", None)
        # torch has no public close: this is what the iterator's __del__ calls.
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        if self._pinned:
            torch.cuda.cudart().cudaHostUnregister(self._slots.data_ptr())
        self._loader, self._slots, self._pinned = None, None, False

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batches(
    dataset,
    batch_size: int,
    generator: torch.Generator | None,
    num_workers: int = 0,
    pin_memory: bool = False,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
):
    """One epoch of :class:`BatchLoader` batches; its workers end with the epoch (or when the
    caller drops the iterator)."""
    with BatchLoader(dataset, batch_size, num_workers, pin_memory, device, rank, world_size) as ld:
        yield from ld.epoch(generator)
