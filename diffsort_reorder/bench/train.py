"""``python -m diffsort_reorder.bench train``: the cost of learning the order.

Time per training step (forward, backward, optimizer step; ``diffsort_reorder.run.loop.train_step``,
the loop's own step) with a fixed order and with each estimator in its training mode, on the tiny
default backbone, at N=64 (8x8 patches) and N=196 (14x14). Target on this CPU: the overhead of
plackett_luce, softsort, neuralsort and torchsort over the fixed order is at most 25%.
``saliency`` orders every image from the backbone's first block(s) run on the canonical order;
its row includes that early pass, whose own time is reported in ``early_pass_ms``.
"""

from __future__ import annotations

import gc
import statistics
import time

import torch

from estimators import list_estimators

from ..config import compose_config
from ..data import patchify
from ..run.build import build_run
from ..run.loop import train_step
from ..run.runtime import seed_everything
from . import print_results

GRIDS = {64: 8, 196: 14}
CHEAP = ("plackett_luce", "softsort", "neuralsort", "torchsort")  # the 25% target
MAX_OVERHEAD = 0.25


def build(method: str, grid: int, backbone: str, batch: int, device: str):
    """A run of ``method`` in training mode on a ``grid x grid`` planted batch."""
    cfg = compose_config([
        f"method={method}", f"backbone={backbone}", f"data.options.grid_size={grid}",
        f"data.options.num_train={batch}", "data.options.num_val=8", f"trainer.device={device}",
        f"trainer.batch_size={batch}", "output_dir=/dev/null",
    ])  # fmt: skip
    seed_everything(0)
    run = build_run(cfg)
    run.model.train()
    run.orderer.train()
    return run, run.train_set.images.to(run.device), run.train_set.labels.to(run.device)


def timed_step(run, images, labels) -> tuple[float, float | None]:
    """Seconds of one ``train_step`` and the early pass's milliseconds (None without one)."""
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out, _, _ = train_step(run, images, labels)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out.aux.get("early_pass_ms")


def early_pass_gflop(run, images) -> float | None:
    """Forward GFLOPs of the early pass an orderer asks for (matrix products, counted by
    ``torch.utils.flop_counter``), against the whole model's forward in the same units."""
    wants = run.orderer.wants
    if wants.kind == "nothing":
        return None
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        tokens = run.model.embed(patchify(images, run.cfg.data.patch_size))
        with FlopCounterMode(display=False) as counter:
            run.model.answer(wants, tokens)
    return counter.get_total_flops() / 1e9


def model_gflop(run, images) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        tokens = run.model.embed(patchify(images, run.cfg.data.patch_size))
        with FlopCounterMode(display=False) as counter:
            run.model.classify(tokens)
    return counter.get_total_flops() / 1e9


def median_step_seconds(runs: list, steps: int) -> tuple[list[float], float | None]:
    """Median step seconds of each run, their steps alternating (three warm-up rounds), so that
    the machine's drift falls on all alike; and the last run's median early-pass ms."""
    times: list[list[float]] = [[] for _ in runs]
    early = []
    for i in range(steps + 3):
        for k, (run, images, labels) in enumerate(runs):
            seconds, early_ms = timed_step(run, images, labels)
            if i >= 3:
                times[k].append(seconds)
                if k == len(runs) - 1 and early_ms is not None:
                    early.append(early_ms)
    return [statistics.median(t) for t in times], statistics.median(early) if early else None


def paired_step_seconds(method: str, grid: int, backbone: str, batch: int, steps: int, device):
    """``method``'s and the fixed row-major order's median step seconds, measured in
    alternation; the early pass's median ms; its and the model's forward GFLOPs."""
    runs = [build(m, grid, backbone, batch, device) for m in ("row_major", method)]
    (base, own), early_ms = median_step_seconds(runs, steps)
    run, images, _ = runs[1]
    flops = early_pass_gflop(run, images)
    if flops is not None:
        flops = (flops, model_gflop(run, images))
    return own, base, early_ms, flops


def step_seconds(method: str, grid: int, backbone: str, batch: int, steps: int, device: str):
    """Median seconds of one training step of ``method`` alone, and its early-pass ms."""
    (seconds,), early_ms = median_step_seconds(
        [build(method, grid, backbone, batch, device)], steps
    )
    return seconds, early_ms


def run_benchmark(device: str, backbone: str = "txl", batch: int = 64, steps: int = 15):
    """Each method's overhead is against the fixed order measured in alternation with it."""
    rows = []
    for n, grid in GRIDS.items():
        base, _ = step_seconds("row_major", grid, backbone, batch, steps, device)
        rows.append(dict(method="row_major (fixed)", N=n, ms=1e3 * base, overhead_pct=0.0))
        for method in list_estimators():
            gc.collect()
            seconds, base, early_ms, flops = paired_step_seconds(
                method, grid, backbone, batch, steps, device
            )
            overhead = 100 * (seconds / base - 1)
            row = dict(method=method, N=n, ms=1e3 * seconds, overhead_pct=overhead,
                       early_pass_ms=early_ms)  # fmt: skip
            if flops is not None:
                row.update(early_pass_gflop=flops[0], model_gflop=flops[1])
            rows.append(row)
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    checks = []
    for row in rows:
        if row["method"] in CHEAP:
            checks.append(
                dict(
                    target=f"{row['method']} N={row['N']}: step overhead <= 25%",
                    measured=f"{row['overhead_pct']:+.1f}%",
                    holds=row["overhead_pct"] <= 100 * MAX_OVERHEAD,
                )
            )
    return checks


def main(args) -> dict:
    device = args.device
    print(f"# train-step benchmark on {device} ({torch.get_num_threads()} threads): tiny txl, "
          f"batch 64, median of 15 steps after 3 warm-up; overhead vs the fixed order, "
          f"their steps alternating")  # fmt: skip
    rows = run_benchmark(device)
    columns = ["method", "N", "ms", "overhead_pct", "early_pass_ms", "early_pass_gflop",
               "model_gflop"]  # fmt: skip
    checks = check_targets(rows)
    print_results(rows, columns, checks)
    return {"device": device, "rows": rows, "checks": checks}
