"""``python -m diffsort_reorder.bench data``: images/s of the image-folder input pipeline.

The benchmark writes an image folder of JPEG photos (crops of scikit-learn's two bundled sample
photos, 427x640, flipped and shifted so no two files are equal), then reads one epoch of it at
224x224 through :func:`diffsort_reorder.data.batches` with 0, 1 and 2 DataLoader workers.
Target on this 2-core CPU: 2 workers at least 1.8x the 0-worker rate.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import batches, create_dataset
from . import print_results

NUM_IMAGES, IMAGE_SIZE, BATCH = 384, 224, 32
WORKERS = (0, 1, 2)
TARGET = 1.8


def write_photo_folder(root: Path, num_images: int = NUM_IMAGES) -> Path:
    """``root/train/<photo>/*.jpg`` and one image per class in ``root/val``: real photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    for split, count in (("train", num_images), ("val", len(photos.filenames))):
        for c, (name, pixels) in enumerate(zip(photos.filenames, photos.images, strict=True)):
            folder = root / split / Path(name).stem
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(c, count, len(photos.filenames)):
                shifted = np.roll(pixels, 7 * i, axis=1)
                image = Image.fromarray(shifted[:, ::-1] if i % 2 else shifted)
                image.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def images_per_second(dataset, num_workers: int, batch_size: int = BATCH) -> float:
    """One shuffled epoch through the DataLoader, start-up included."""
    start = time.perf_counter()
    seen = 0
    gen = torch.Generator().manual_seed(0)
    for images, _ in batches(dataset, batch_size, gen, num_workers=num_workers):
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def run_benchmark(num_images: int = NUM_IMAGES, workers=WORKERS, repeats: int = 1) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_photo_folder(Path(tmp), num_images)
        train_set, _ = create_dataset("imagefolder", root=str(root), image_size=IMAGE_SIZE)
        for w in workers:
            rate = max(images_per_second(train_set, w) for _ in range(repeats))
            rows.append(dict(num_workers=w, images=len(train_set), images_per_s=rate))
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    rate = {r["num_workers"]: r["images_per_s"] for r in rows}
    if 0 not in rate or 2 not in rate:
        return []
    speedup = rate[2] / rate[0]
    return [
        dict(
            target=f"2 workers >= {TARGET}x the 0-worker images/s",
            measured=f"{speedup:.2f}x ({rate[2]:.0f} vs {rate[0]:.0f} images/s)",
            holds=speedup >= TARGET,
        )
    ]


def main(args) -> dict:
    num_images = int(args.sizes.split("x")[-1]) if args.sizes else NUM_IMAGES
    print(f"# data benchmark: an image folder of {num_images} JPEG photos read at "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH}, best of {args.repeats}")  # fmt: skip
    rows = run_benchmark(num_images, repeats=args.repeats)
    checks = check_targets(rows)
    print_results(rows, ["num_workers", "images", "images_per_s"], checks)
    return {"rows": rows, "checks": checks}
