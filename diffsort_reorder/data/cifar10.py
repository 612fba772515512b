"""``cifar10``: the python-pickle batches of CIFAR-10 read from a local directory.

The uint8 pixels stay in memory; images are made when indexed (through torch's DataLoader like
image files), resized to ``image_size`` on their device, a batch at a time.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..checks import check_int
from .base import LazyImageDataset, resize_images

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


def cifar10(
    *,
    root: str,
    image_size: int | None = None,
    train_limit: int | None = None,
    val_limit: int | None = None,
) -> tuple[Cifar10Dataset, Cifar10Dataset]:
    """CIFAR-10 from ``root``: the five training batches, and ``test_batch`` as the val split."""
    if root is None:
        raise ValueError("'root' should name the local CIFAR-10 directory but got None")
    if image_size is not None:
        check_int("image_size", image_size, 1)
    folder = _find_batches(Path(root).expanduser())
    train = [_load_batch(folder / f) for f in TRAIN_FILES]
    train_pixels = torch.cat([pixels for pixels, _ in train])[:train_limit]
    train_labels = torch.cat([labels for _, labels in train])[:train_limit]
    val_pixels, val_labels = _load_batch(folder / TEST_FILE)
    return (
        Cifar10Dataset(train_pixels, train_labels, image_size),
        Cifar10Dataset(val_pixels[:val_limit], val_labels[:val_limit], image_size),
    )
