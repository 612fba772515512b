"""``imagefolder``: one folder per class (ImageNet / FMoW layout), read lazily with Pillow.

root/train/<class>/<image>.jpg
root/val/<class>/<image>.jpg
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import ImageDataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """RGB ``(3, S, S)`` in [0, 1]: shorter side resized to ``image_size``, then a centre crop."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = image_size / min(w, h)
        new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
        array = np.asarray(img, dtype=np.float32) / 255.0  # (S, S, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageFolderDataset(ImageDataset):
    """A split of an image folder; images are decoded when indexed, labels known up front."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], image_size: int):
        self.samples = samples
        self.image_size = image_size
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.num_classes = len(classes)
        self.classes = classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return load_image(path, self.image_size), label


def _split(root: Path, name: str, classes: list[str] | None) -> tuple[list, list[str]]:
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder split {str(folder)!r} does not exist; expected {str(root)!r} to hold "
            f"'train' and 'val' folders with one sub-folder of images per class"
        )
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{str(folder)!r} has classes missing from 'train': {unknown}")
    samples = [(path, classes.index(c)) for c in found for path in _list_images(folder / c)]
    if not samples:
        raise FileNotFoundError(
            f"no images in {str(folder)!r}; accepted suffixes: {sorted(IMAGE_SUFFIXES)}"
        )
    return samples, classes


def imagefolder(
    *, root: str, image_size: int = 224
) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """Train/val splits from ``root/train`` and ``root/val``, class names from train's folders."""
    if root is None:
        raise ValueError("'root' should name a local image folder but got None")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"'image_size' should be a positive int but got {image_size!r}")
    base = Path(root).expanduser()
    train_samples, classes = _split(base, "train", None)
    val_samples, _ = _split(base, "val", classes)
    return (
        ImageFolderDataset(train_samples, classes, image_size),
        ImageFolderDataset(val_samples, classes, image_size),
    )
