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

import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import BatchLoader, create_dataset
from ..data.base import held_out_count
from ..data.imagefolder import VAL_FRACTION
from . import _sync, print_results

NUM_IMAGES, IMAGE_SIZE, BATCH = 384, 224, 32
WORKERS = (0, 1, 2)
EPOCHS = 3  # per loader: the first starts the workers, the rest are steady
TARGET = 1.8


def write_photo_folder(root: Path, num_images: int = NUM_IMAGES) -> Path:
    """``root/train/<photo>/*.jpg``, whose train split holds ``num_images`` once the default val
    images are held out (a few more files), and one image per class in ``root/val``: real
    photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    k = len(photos.filenames)
    for c, (name, pixels) in enumerate(zip(photos.filenames, photos.images, strict=True)):
        train = len(range(c, num_images, k))  # this photo's share of the training images
        files = train
        while files - held_out_count(files, VAL_FRACTION) < train:
            files += 1
        for split, count in (("train", files), ("val", 1)):
            folder = root / split / Path(name).stem
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(c, c + k * count, k):
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


_dataset = None  # what a plain decoder process reads


def _decode(keys: list) -> None:
    for key in keys:
        _dataset.raw_item(key)


def _keep(dataset) -> None:
    global _dataset
    _dataset = dataset


class PlainDecoders:
    """The machine's own rate: ``dataset``'s images decoded and transformed by ``count``
    processes started once (None: this process), each its share, no DataLoader."""

    def __init__(self, dataset, count: int | None) -> None:
        self.keys = [(i, 0) for i in range(len(dataset))]  # seeded as training: flips drawn
        self.count, self.pool = count, None
        _keep(dataset)
        if count:
            context = multiprocessing.get_context("fork")  # inherits _dataset, not pickled
            self.pool = context.Pool(count)
            self.pool.map(_decode, [[]] * count)  # every process up before the first timing

    def rate(self) -> float:
        start = time.perf_counter()
        if self.pool is None:
            _decode(self.keys)
        else:
            self.pool.map(_decode, [self.keys[k :: self.count] for k in range(self.count)], 1)
        return len(self.keys) / (time.perf_counter() - start)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()


def worker_rows(dataset, workers=WORKERS, device="cpu", repeats: int = 1) -> list[dict]:
    """Per worker count: the first epoch's images/s and the best steady epoch's, best of
    ``repeats`` loaders; then the plain decoders' rows (one process, two). The repeats take
    turns over them all (0, 1, 2, plain, 0, 1, 2, plain, ...), so a slow spell of a shared
    machine does not fall on one row alone."""
    plain = [PlainDecoders(dataset, count) for count in (None, 2)]
    try:
        turns = []
        for _ in range(repeats):
            turns.append([epoch_rates(dataset, w, device) for w in workers])
            turns[-1] += [[0.0, decoders.rate()] for decoders in plain]
    finally:
        for decoders in plain:
            decoders.close()
    workers = [*workers, "plain, 1 process", "plain, 2 processes"]
    rows = []
    for k, w in enumerate(workers):
        runs = [turn[k] for turn in turns]
        first = max(r[0] for r in runs) or None  # plain rows: no first epoch
        rows.append(dict(num_workers=w, images=len(dataset), first_epoch_images_per_s=first,
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


def turn_ratio(rows: list[dict], top, bottom) -> tuple[float, float, float] | None:
    """The median, least and most over turns of row ``top``'s steady rate / row ``bottom``'s."""
    row = {r["num_workers"]: r for r in rows}
    if top not in row or bottom not in row:
        return None
    turns = zip(row[top]["turn_images_per_s"], row[bottom]["turn_images_per_s"], strict=True)
    ratios = [a / b for a, b in turns]
    return statistics.median(ratios), min(ratios), max(ratios)


def machine_line(rows: list[dict]) -> str | None:
    scaling = turn_ratio(rows, "plain, 2 processes", "plain, 1 process")
    share = turn_ratio(rows, 2, "plain, 2 processes")
    if scaling is None or share is None:
        return None
    return (
        f"This machine: 2 plain decoder processes ran {scaling[0]:.2f}x one (median over "
        f"turns, {scaling[1]:.2f}x-{scaling[2]:.2f}x); the loader's 2 workers ran "
        f"{share[0]:.0%} as fast as the 2 plain processes ({share[1]:.0%}-{share[2]:.0%})."
    )


def main(args) -> dict:
    num_images = int(args.sizes.split("x")[-1]) if args.sizes else NUM_IMAGES
    print(f"# data benchmark: an image folder of {num_images} JPEG photos read at "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH}, on {args.device}, {EPOCHS} epochs per "
          f"loader, best of {args.repeats} turns over the worker counts")  # fmt: skip
    rows = run_benchmark(num_images, repeats=args.repeats, device=args.device)
    checks = check_targets(rows)
    columns = ["num_workers", "images", "first_epoch_images_per_s", "images_per_s"]
    print_results(rows, columns, checks)
    machine = machine_line(rows)
    if machine:
        print(machine)
    return {"rows": rows, "checks": checks, "machine": machine}
