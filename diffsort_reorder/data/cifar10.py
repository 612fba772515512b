"""``cifar10``: the python-pickle batches of CIFAR-10 read from a local directory.

``test_batch`` is the test split (the reported numbers); val, what a study selects on, is held out
of the five training batches, the same images for every run seed. The uint8 pixels stay in
memory; images are made when indexed (through torch's DataLoader like image files), resized to
``image_size`` on their device, a batch at a time.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..checks import check_int
from .base import LazyImageDataset, resize_images, split_by_class

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]  # fmt: skip


def _find_batches(root: Path) -> Path:
    """``root`` itself or its ``cifar-10-batches-py`` child, whichever holds the batches."""
    for candidate in (root, root / "cifar-10-batches-py"):
        if all((candidate / f).is_file() for f in [*TRAIN_FILES, TEST_FILE]):
            return candidate
    missing = [f for f in [*TRAIN_FILES, TEST_FILE] if not (root / f).is_file()]
    raise FileNotFoundError(
        f"CIFAR-10 batches not found in {str(root)!r} (nor in its 'cifar-10-batches-py' folder): "
        f"missing {', '.join(missing)}; expected the python-pickle files "
        f"{', '.join([*TRAIN_FILES, TEST_FILE])} (nothing is downloaded)"
    )


def _load_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{str(path)!r} holds data of shape {data.shape}, expected (M, 3072)")
    pixels = torch.from_numpy(data).reshape(-1, 3, 32, 32)  # (M, 3, 32, 32) uint8
    labels = torch.tensor(batch[b"labels"], dtype=torch.long)
    return pixels, labels


class Cifar10Dataset(LazyImageDataset):
    """uint8 pixels ``(M, 3, 32, 32)`` in memory; floats in [0, 1] at ``image_size`` when read."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, image_size: int | None):
        self.pixels, self.labels, self.image_size = pixels, labels, image_size
        self.num_classes, self.classes = 10, CLASSES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.image_size or 32
        return (3, size, size)

    def raw(self, i: int, rng: np.random.Generator | None) -> torch.Tensor:
        return self.pixels[i]

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        return resize_images(super().to_unit(images), self.image_size)


def locate(root: str) -> Path:
    """The folder under ``root`` that holds the batches (nothing is read), or a
    FileNotFoundError naming the missing files."""
    return _find_batches(Path(root).expanduser())


def _limit(key: str, value: int | None) -> int | None:
    return None if value is None else check_int(key, value, 1)


def cifar10(
    *,
    root: str,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_limit: int | None = None,
    val_limit: int | None = None,
    test_limit: int | None = None,
) -> tuple[Cifar10Dataset, Cifar10Dataset, Cifar10Dataset]:
    """CIFAR-10 from ``root``: train and val from the five training batches, ``test_batch`` as
    the test split.

    ``val_fraction``: of each class's training images held out for val (0.1: 5,000 of 50,000),
    drawn by ``split_seed`` (never the run seed: a study's every run selects on the same images);
    ``train_limit``, ``val_limit``, ``test_limit``: at most that many images of each split
    (None: all), the first ones in file order."""
    if root is None:
        raise ValueError("'root' should name the local CIFAR-10 directory but got None")
    if image_size is not None:
        check_int("image_size", image_size, 1)
    limits = [_limit("train_limit", train_limit), _limit("val_limit", val_limit),
              _limit("test_limit", test_limit)]  # fmt: skip
    folder = _find_batches(Path(root).expanduser())
    batches = [_load_batch(folder / f) for f in TRAIN_FILES]
    pixels = torch.cat([batch_pixels for batch_pixels, _ in batches])  # (50000, 3, 32, 32) uint8
    labels = torch.cat([batch_labels for _, batch_labels in batches])  # (50000,)
    train, val = split_by_class(labels, CLASSES, val_fraction, split_seed)
    test_pixels, test_labels = _load_batch(folder / TEST_FILE)
    parts = [(pixels[train], labels[train]), (pixels[val], labels[val]), (test_pixels, test_labels)]
    return tuple(
        Cifar10Dataset(part_pixels[:limit], part_labels[:limit], image_size)
        for (part_pixels, part_labels), limit in zip(parts, limits, strict=True)
    )
