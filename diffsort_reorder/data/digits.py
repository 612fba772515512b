"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from .base import ImageDataset, resize_images, split_indices


def digits(
    *, image_size: int | None = None, val_fraction: float = 0.2, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Train/val splits of the digits, ``(1, 8, 8)`` in [0, 1] or upscaled to ``image_size``."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # (M, 1, 8, 8)
    images = resize_images(images, image_size)
    labels = torch.from_numpy(bunch.target).long()
    train_idx, val_idx = split_indices(len(labels), val_fraction, seed)
    classes = [str(c) for c in bunch.target_names]
    return (
        ImageDataset(images[train_idx], labels[train_idx], 10, classes),
        ImageDataset(images[val_idx], labels[val_idx], 10, classes),
    )
