"""What a :class:`~diffsort_reorder.data.BatchLoader`'s DataLoader workers share: the epoch's
items, batch slots for their pixels, and who decodes which item.

A DataLoader hands each worker whole batches in turn and returns them in order, so one slow
worker (a large photo, or the main process on its core) holds every batch behind it: measured on
2 cores with 2 workers, one worker sat idle 12-17% of each epoch while the other finished its
half. Here a batch number is only a request. A worker asked for batch ``b`` decodes the epoch's
next unclaimed image, of ``b`` or of any batch the DataLoader has already sent out, and again,
until every image of ``b`` is done (by it or by another worker), then answers ``b``. The oldest
batch is always decoded first, by every worker at once.

The pixels go straight into shared uint8 slots kept for the whole run, and only batch numbers
cross between processes: a fresh shared tensor per batch (DataLoader's own way) costs a new
segment and its page faults every batch, which held 2 workers to 1.63-1.70x one process's rate
on 2 cores, against 1.79-1.87x with reused slots.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

CLAIMED, SENT, SEED, BATCHES = range(4)  # the shared state: images claimed, images sent out,
# the seed of the epoch's random transforms, its batches
NO_SEED = -1  # unshuffled: images keyed by their index alone (no random transforms)
WAIT_S = 2e-4  # a worker with nothing to claim polls for its batch's last images this often
ALIVE_S = 1.0  # and checks this often that the main process still runs


def shared(*shape: int, dtype=torch.int64) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype).share_memory_()


class SharedEpoch(Dataset):
    """The dataset the DataLoader's workers read: ``__getitems__(b)`` returns ``b`` once batch
    ``b``'s uint8 pixels are in ``slots[b % len(slots)]``.

    The main process writes the epoch (:meth:`start`) while no worker reads it, and marks each
    batch sent (:meth:`send`) before the DataLoader sends it; a worker claims only images of sent
    batches, whose slots the main process has released. An image that fails in a worker is
    decoded again by its batch's own worker, so the error is raised for that batch, in order.
    """

    def __init__(self, dataset, slots: torch.Tensor, max_batches: int, workers: int, lock) -> None:
        self.dataset, self.slots, self.lock = dataset, slots, lock
        self.workers = max(workers, 1)  # processes that decode (0 workers: this one)
        self.index = shared(len(dataset))  # the epoch's image indices, batch after batch
        self.offsets = shared(max_batches + 1)  # batch b's images: index[offsets[b]:offsets[b+1]]
        self.done = shared(max_batches)  # images of each batch in its slot
        self.failed = shared(len(dataset), dtype=torch.bool)  # per image: left to its owner
        self.state = shared(4)
        self.state[SEED] = NO_SEED
        self.main_pid = os.getpid()

    def __len__(self) -> int:
        return len(self.dataset)

    def start(self, order: list[torch.Tensor], seed: int | None) -> None:
        """The epoch's batches of image indices (main process, no worker reading)."""
        sizes = torch.tensor([len(idx) for idx in order], dtype=torch.int64)
        total = int(sizes.sum())
        self.offsets[1:] = total  # sorted beyond the epoch's batches too, for _batch_of
        self.offsets[1 : len(order) + 1] = sizes.cumsum(0)
        if order:
            self.index[:total] = torch.cat(order)
        self.done.zero_()
        self.failed.zero_()
        self.state[:] = torch.tensor([0, 0, NO_SEED if seed is None else seed, len(order)])

    def send(self, b: int) -> None:
        """Let workers claim batch ``b``'s images: its slot is free (main process)."""
        with self.lock:
            self.state[SENT] = self.offsets[b + 1]

    def __getitems__(self, b: int) -> int:
        lo, hi = self.offsets[b : b + 2].tolist()
        # A DataLoader asks its workers in turn: one of the epoch's last batches is a worker's
        # last, so it helps with the rest before answering, not idle for the epoch's end.
        tail = b >= int(self.state[BATCHES]) - self.workers
        decoded, last_check = None, time.monotonic()  # decoded: the batch of the last image
        while True:
            with self._locked():
                if decoded is not None:
                    self.done[decoded] += 1
                item, sent = self.state[CLAIMED : SENT + 1].tolist()
                finished = int(self.done[b]) == hi - lo
                claim = item < sent and (tail or not finished)
                if claim:
                    self.state[CLAIMED] = item + 1
                elif finished:
                    break
            if claim:
                decoded = self._decode(item, own=False)
                continue
            decoded = None
            if time.monotonic() - last_check < ALIVE_S:
                time.sleep(WAIT_S)  # the last images of b are with other workers
            else:
                self._check_main_alive()
                last_check = time.monotonic()
        for item in (lo + self.failed[lo:hi].nonzero().flatten()).tolist():
            self._decode(item, own=True)  # raises for this batch, if it fails again
        return b

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock, in a worker: one whose main process died holding it does not wait on."""
        while not self.lock.acquire(timeout=ALIVE_S):
            self._check_main_alive()
        try:
            yield
        finally:
            self.lock.release()

    def _batch_of(self, item: int) -> int:
        return int(torch.searchsorted(self.offsets[1:], item, right=True))

    def _decode(self, item: int, own: bool) -> int:
        """Image ``item`` of the epoch into its batch's slot; returns the batch."""
        b = self._batch_of(item)
        index, seed = int(self.index[item]), int(self.state[SEED])
        try:
            image, _ = self.dataset.raw_item(index if seed == NO_SEED else (index, seed))
            slot = self.slots[b % len(self.slots), item - int(self.offsets[b])]  # (C, H, W)
            if image.shape != slot.shape or image.dtype != slot.dtype:
                raise ValueError(
                    f"'raw' should make every image uint8 {tuple(slot.shape)} (as image 0) but "
                    f"image {index} is {image.dtype} {tuple(image.shape)}"
                )
            slot.copy_(image)
        except Exception:
            if own:
                raise
            self.failed[item] = True  # (start() clears the flags; an image is claimed once)
        return b

    def _check_main_alive(self) -> None:
        try:
            os.kill(self.main_pid, 0)
        except ProcessLookupError:
            raise SystemExit(f"the main process {self.main_pid} ended") from None


class EpochBatches(Sampler):
    """The batch sampler: batch numbers ``0..len(order)-1``, each marked sent in ``items`` as
    the DataLoader takes it; ``order`` and ``seed`` are set before each epoch."""

    def __init__(self, items: SharedEpoch) -> None:
        self.items = items
        self.order: list[torch.Tensor] = []
        self.seed: int | None = None

    def __iter__(self):
        # The body runs at the DataLoader's first request of an epoch: after its persistent
        # workers have answered the new epoch's call (each has finished the last one's work), so
        # none reads the items while they are rewritten.
        self.items.start(self.order, self.seed)
        for b in range(len(self.order)):
            self.items.send(b)
            yield b

    def __len__(self) -> int:
        return len(self.order)
