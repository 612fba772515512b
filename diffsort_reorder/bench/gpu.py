"""``python -m diffsort_reorder.bench gpu``: what one GPU does at REOrder's base size.

In order, each part's table printed as soon as it is measured (under 8 minutes on one GPU):

1. training: steps/s and images/s of the loop's own ``train_step`` for every backbone at its
   config's base size (``backbone.size=base``: width 768, 12 blocks) on 224x224 photos in 16x16
   patches (N = 196), the row-major order, bf16 autocast, eager;
2. data: images/s of the input pipeline to the GPU (``bench data``'s loader: persistent workers,
   pinned memory, uint8 batches made float on the GPU) with 0, 4 and 8 workers;
3. ddp: a 2-process run through ``torch.distributed.run`` when two GPUs exist (its wall time and
   result), else the reason it was skipped;
4. training again with ``torch.compile`` (the first steps' seconds include compiling); a case is
   skipped, with the reason printed, once the benchmark has run ``COMPILE_BUDGET_S``.

Without CUDA it stops at once with a one-line error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..cli import bad_input
from ..config import compose_config
from ..data import create_dataset
from ..run.build import build_run
from ..run.loop import train_step
from ..run.runtime import seed_everything
from . import _sync, markdown_table, parse_sizes
from .data import worker_rows, write_photo_folder

BACKBONES = ("vit", "local", "txl", "mamba")
IMAGE_SIZE, PATCH, BATCH = 224, 16, 64
SIZES = [(BATCH, (IMAGE_SIZE // PATCH) ** 2)]  # --sizes Bx196 sets the batch
WARMUP, STEPS = 3, 10
DATA_IMAGES, DATA_WORKERS = 1024, (0, 4, 8)
DDP_TIMEOUT_S = 120
COMPILE_BUDGET_S = 240  # no compile case starts after this many seconds


def require_cuda(device: str) -> torch.device:
    """The CUDA device, or a ValueError that says there is none."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"diffsort-bench gpu needs a CUDA GPU but got --device {device} "
                         f"(torch.cuda.is_available() is {torch.cuda.is_available()})")  # fmt: skip
    return torch.device(device)


def run_overrides(root: Path, backbone: str, batch: int, device: str, **extra) -> list[str]:
    """The run config of a base-size backbone on the photo folder at ``root``."""
    options = {"data": "imagefolder", "data.options.root": root, "backbone": backbone,
               "backbone.size": "base", "method": "row_major", "trainer.device": device,
               "trainer.batch_size": batch, "trainer.amp": True, "trainer.progress": False,
               **extra}  # fmt: skip
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]


def training_row(root, backbone: str, batch: int, device: str, compile: bool, **extra) -> dict:
    """Steps/s of ``train_step`` on one real batch of the folder; ``warmup_s``: the first
    ``WARMUP`` steps (compiling, autotuning, allocating)."""
    cfg = compose_config(
        [
            *run_overrides(root, backbone, batch, device, **extra),
            f"trainer.compile={compile}",
            "output_dir=/dev/null",
        ]  # fmt: skip
    )
    torch._dynamo.reset()
    seed_everything(0)
    run = build_run(cfg)
    images, labels = next(run.loader("train").epoch(torch.Generator().manual_seed(0)))
    run.close()
    images, labels = images.to(run.device), labels.to(run.device)
    run.model.train()
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    seconds = []
    for steps in (WARMUP, STEPS):
        _sync(run.device)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(run, images, labels)
        _sync(run.device)
        seconds.append(time.perf_counter() - start)
    cuda = run.device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(run.device) / 2**30 if cuda else None
    steps_per_s, b = STEPS / seconds[1], images.shape[0]
    return dict(backbone=backbone, compile=compile, batch=b, N=run.grid[0] * run.grid[1],
                warmup_s=seconds[0], steps_per_s=steps_per_s, images_per_s=steps_per_s * b,
                peak_gb=peak)  # fmt: skip


def ddp_command(overrides: list[str], nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m
    diffsort_reorder.train ...``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(nproc), "-m", "diffsort_reorder.train", *overrides]  # fmt: skip


def last_json(text: str) -> dict | None:
    """The last line of ``text`` that parses as a JSON object (the train command's result)."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def ddp_row(root: Path, out: Path) -> dict:
    """A 2-process run of 2 epochs (ViT base on the folder), or why it was skipped."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return dict(ddp="skipped", reason=f"needs 2 GPUs, this machine has {gpus}")
    overrides = run_overrides(root, "vit", BATCH, "cuda", **{"trainer.epochs": 2,
                              "trainer.warmup_epochs": 0, "trainer.num_workers": 4})  # fmt: skip
    command = ddp_command([*overrides, f"output_dir={out}"])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return dict(ddp="timed out", reason=f"no result in {DDP_TIMEOUT_S} s")
    wall = time.perf_counter() - start
    result = last_json(done.stdout) or {}
    reason = "" if done.returncode == 0 else " ".join(done.stderr.strip().splitlines()[-3:])
    return dict(ddp=f"exit {done.returncode}", wall_s=wall, steps=result.get("steps"),
                val_acc=result.get("val_acc"), reason=reason)  # fmt: skip


def show(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n## {title}\n\n{markdown_table(rows, columns)}", flush=True)


def main(args) -> dict:
    with bad_input():  # one line and exit status 2, as every command refuses input
        device = require_cuda(args.device)
        batch, n = parse_sizes(args.sizes)[0]
        if n != SIZES[0][1]:
            raise ValueError(f"--sizes should be Bx{SIZES[0][1]} (224x224 in 16x16 patches) but "
                             f"got {args.sizes}")  # fmt: skip
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device)
    print(f"# gpu benchmark on {name}: base-size backbones, {IMAGE_SIZE}x{IMAGE_SIZE} images, "
          f"batch {batch}, bf16 autocast", flush=True)  # fmt: skip
    columns = ["backbone", "compile", "batch", "N", "warmup_s", "steps_per_s", "images_per_s",
               "peak_gb"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photo_folder(Path(tmp) / "batch", batch)
        eager = [training_row(photos, b, batch, args.device, compile=False) for b in BACKBONES]
        show("training, eager", eager, columns)
        data_set = write_photo_folder(Path(tmp) / "data", DATA_IMAGES)
        train_set, _ = create_dataset("imagefolder", root=str(data_set))
        workers = [w for w in DATA_WORKERS if w <= (os.cpu_count() or 1)]
        data = worker_rows(train_set, workers, device)
        show("data: image folder to the GPU", data,
             ["num_workers", "images", "first_epoch_images_per_s", "images_per_s"])  # fmt: skip
        ddp = [ddp_row(photos, Path(tmp) / "ddp")]
        show("ddp: 2 processes", ddp, list(ddp[0]))
        compiled = []
        for b in BACKBONES:
            elapsed = time.perf_counter() - started
            if elapsed > COMPILE_BUDGET_S:
                print(f"compile {b}: skipped, {elapsed:.0f} s spent (budget {COMPILE_BUDGET_S})")
                continue
            compiled.append(training_row(photos, b, batch, args.device, compile=True))
        show("training, torch.compile", compiled, columns)
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)
    return {"training": eager + compiled, "data": data, "ddp": ddp, "checks": []}
