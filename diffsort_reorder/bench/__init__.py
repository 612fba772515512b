"""Benchmarks: ``python -m diffsort_reorder.bench {data,estimators,gpu,long,study,train}``.

Speed and memory targets live here, never in timed tests. ``measure`` times a forward+backward
closure and reports its peak memory above what was allocated before it ran: on CUDA from the
caching allocator's peak, on CPU from the process's resident-set high-water mark, reset through
``/proc/self/clear_refs`` before each case (Linux). So that the resident set follows the live
tensors, during that pass glibc serves every block over 64 KiB with its own mapping (returned to
the system when freed) and is trimmed first; timings run with its usual heap reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Measurement:
    seconds: float  # best of the repeats
    peak_mb: float | None  # None where the platform cannot tell


def _status_kb(key: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _mmap_threshold(nbytes: int) -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, nbytes)


def _cpu_peak_supported() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _status_kb("VmHWM")
    except OSError:
        return False
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> Measurement:
    """Run ``fn`` once to warm up, then ``repeats`` times; the best time and the peak memory."""
    if device.type == "cpu":
        _mmap_threshold(32 * 2**20)  # glibc's largest dynamic threshold: heap reuse, as usual
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    elif _cpu_peak_supported():
        _mmap_threshold(64 * 2**10)  # every tensor its own mapping: freed memory leaves the RSS
        gc.collect()
        _libc().malloc_trim(0)
        base = _status_kb("VmRSS")
        _CLEAR_REFS.write_text("5")  # high-water mark := current RSS
        fn()
        peak = max(0, _status_kb("VmHWM") - base) / 2**10
    else:
        peak = None
    return Measurement(best, peak)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"  # 1079, not 1.08e+03
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"32x196,8x1024"`` -> ``[(32, 196), (8, 1024)]``."""
    return [tuple(int(v) for v in size.split("x")) for size in text.split(",")]


def find_row(rows: list[dict], function: str, b: int, n: int) -> dict | None:
    """The row of ``function`` at batch ``b`` and length ``n``, or None."""
    return next((r for r in rows if r["function"] == function and (r["B"], r["N"]) == (b, n)), None)


def print_results(rows: list[dict], columns: list[str], checks: list[dict]) -> None:
    """The rows as a markdown table, then the target checks (if any)."""
    print(markdown_table(rows, columns))
    if checks:
        print()
        print(markdown_table(checks, ["target", "measured", "holds"]))
