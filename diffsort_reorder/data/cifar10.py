"""``cifar10``: the python-pickle batches of CIFAR-10 read from a local directory."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset, resize_images

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
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
    images = torch.from_numpy(data).reshape(-1, 3, 32, 32).float().div_(255.0)
    labels = torch.tensor(batch[b"labels"], dtype=torch.long)
    return images, labels


def cifar10(
    *,
    root: str,
    image_size: int | None = None,
    train_limit: int | None = None,
    val_limit: int | None = None,
) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-10 from ``root``: the five training batches, and ``test_batch`` as the val split."""
    if root is None:
        raise ValueError("'root' should name the local CIFAR-10 directory but got None")
    folder = _find_batches(Path(root).expanduser())
    train = [_load_batch(folder / f) for f in TRAIN_FILES]
    train_images = torch.cat([images for images, _ in train])
    train_labels = torch.cat([labels for _, labels in train])
    val_images, val_labels = _load_batch(folder / TEST_FILE)
    train_images, train_labels = train_images[:train_limit], train_labels[:train_limit]
    val_images, val_labels = val_images[:val_limit], val_labels[:val_limit]
    return (
        ImageDataset(resize_images(train_images, image_size), train_labels, 10, CLASSES),
        ImageDataset(resize_images(val_images, image_size), val_labels, 10, CLASSES),
    )
