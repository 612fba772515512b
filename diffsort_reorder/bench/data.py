"""``python -m diffsort_reorder.bench data``: images/s of the image-folder input pipeline.

The benchmark writes an image folder of JPEG photos (scikit-learn's two bundled sample photos,
427x640, flipped and shifted so no two files are equal), then reads it at 224x224 with REOrder's
training transforms through the loader training uses (:class:`~diffsort_reorder.data.BatchLoader`:
persistent DataLoader workers, batches made float on ``--device``) with 0, 1 and 2 workers. Each
loader reads ``EPOCHS`` shuffled epochs: the first includes starting the workers (once per run in
training), the others are the steady rate. Target on this 2-core CPU: 2 workers at least 1.8x the
0-worker rate, steady.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import BatchLoader, create_dataset
from . import _sync, print_results

NUM_IMAGES, IMAGE_SIZE, BATCH = 384, 224, 32
WORKERS = (0, 1, 2)
EPOCHS = 3  # per loader: the first starts the workers, the rest are steady
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


def epoch_rates(dataset, num_workers: int, device="cpu", epochs: int = EPOCHS) -> list[float]:
    """Images/s of each of ``epochs`` shuffled epochs through one loader (as one run's epochs),
    the batches made float on ``device``."""
    device = torch.device(device)
    rates = []
    with BatchLoader(dataset, BATCH, num_workers, device.type == "cuda", device) as loader:
        for epoch in range(epochs):
            start, seen = time.perf_counter(), 0
            for images, _ in loader.epoch(torch.Generator().manual_seed(epoch)):
                seen += images.shape[0]
            _sync(device)
            rates.append(seen / (time.perf_counter() - start))
    return rates


def worker_rows(dataset, workers=WORKERS, device="cpu", repeats: int = 1) -> list[dict]:
    """Per worker count: the first epoch's images/s and the best steady epoch's, best of
    ``repeats`` loaders. The repeats take turns over the worker counts (0, 1, 2, 0, 1, 2, ...),
    so a slow spell of a shared machine does not fall on one row alone."""
    turns = [[epoch_rates(dataset, w, device) for w in workers] for _ in range(repeats)]
    rows = []
    for k, w in enumerate(workers):
        runs = [turn[k] for turn in turns]
        rows.append(dict(num_workers=w, images=len(dataset),
                         first_epoch_images_per_s=max(r[0] for r in runs),
                         images_per_s=max(max(r[1:]) for r in runs),
                         turn_images_per_s=[max(r[1:]) for r in runs]))  # fmt: skip
    return rows


def run_benchmark(
    num_images: int = NUM_IMAGES, workers=WORKERS, repeats: int = 1, device="cpu"
) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_photo_folder(Path(tmp), num_images)
        train_set, _ = create_dataset("imagefolder", root=str(root), image_size=IMAGE_SIZE)
        return worker_rows(train_set, workers, device, repeats)


def check_targets(rows: list[dict]) -> list[dict]:
    """The 2-worker speed-up: the median over turns of the turn's 2-worker / 0-worker steady
    rate (a pair measured back to back shares the machine's mood), else of the best rates."""
    row = {r["num_workers"]: r for r in rows}
    if 0 not in row or 2 not in row:
        return []
    turns = (row[2].get("turn_images_per_s", []), row[0].get("turn_images_per_s", []))
    ratios = [two / zero for two, zero in zip(*turns, strict=True)]
    best = row[2]["images_per_s"] / row[0]["images_per_s"]
    speedup = statistics.median(ratios) if ratios else best
    spread = f", turns {min(ratios):.2f}x-{max(ratios):.2f}x" if len(ratios) > 1 else ""
    return [
        dict(
            target=f"2 workers >= {TARGET}x the 0-worker images/s (steady epochs)",
            measured=f"{speedup:.2f}x (best {row[2]['images_per_s']:.0f} vs "
            f"{row[0]['images_per_s']:.0f} images/s{spread})",
            holds=speedup >= TARGET,
        )
    ]


def main(args) -> dict:
    num_images = int(args.sizes.split("x")[-1]) if args.sizes else NUM_IMAGES
    print(f"# data benchmark: an image folder of {num_images} JPEG photos read at "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH}, on {args.device}, {EPOCHS} epochs per "
          f"loader, best of {args.repeats} turns over the worker counts")  # fmt: skip
    rows = run_benchmark(num_images, repeats=args.repeats, device=args.device)
    checks = check_targets(rows)
    columns = ["num_workers", "images", "first_epoch_images_per_s", "images_per_s"]
    print_results(rows, columns, checks)
    return {"rows": rows, "checks": checks}
