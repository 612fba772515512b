"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from .base import ImageDataset, resize_images, split_indices


def digits(
    *,
    image_size: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int | None = None,
    seed: int = 0,
) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """Train/val/test splits of the digits, ``(1, 8, 8)`` in [0, 1] or upscaled to ``image_size``.

    ``split_seed`` draws the split (None: ``seed``). A study pins it, so that every run seed
    shares one test split that no search or trial selection read (``test_fraction=0``: none)."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # (M, 1, 8, 8)
    images = resize_images(images, image_size)
    labels = torch.from_numpy(bunch.target).long()
    split = seed if split_seed is None else split_seed
    parts = split_indices(len(labels), val_fraction, split, test_fraction)
    classes = [str(c) for c in bunch.target_names]
    return tuple(ImageDataset(images[idx], labels[idx], 10, classes) for idx in parts)
