"""``python -m diffsort_reorder.bench long``: SoftSort at pixel length, without its N x N matrix.

Forward + backward time and peak memory of :func:`estimators.softsort_apply` (scores ``(B, N)``,
tokens ``(B, N, D)``, each image its own order) beside the dense ``softsort(s) @ x`` wherever the
dense one fits (``B N^2 <= DENSE_MAX`` entries), plus the ``softsort`` estimator in train mode at
the largest N (one learned order for a batch of 8). On CUDA one more case: ``GPU_CASE``, bf16
tokens and one shared order, beside the memory-bound floor (the bytes it must read and write at
the device's bandwidth). Targets checked at the end, on a 2-core CPU:
- N = 4,096: at least 3x faster than dense;
- N = 50,176, D = 64, B = 1: forward + backward within 0.5 s and at most 2 GB above a bare process;
- the softsort estimator in train mode at N = 50,176: forward + backward within 2.5 GB.
"""

from __future__ import annotations

import torch

import estimators as E
from estimators.matrix_free import softsort_apply_ref

from . import find_row, measure, parse_sizes, print_results

DIM = 64
SIZES = [(b, n) for n in (1024, 4096, 16384, 50176) for b in (1, 8)]
DENSE_MAX = 8 * 4096**2  # B N^2 entries: a dense case that needs ~2 GB per copy of P
TAU = 0.1
SPEED_N, LARGE_N, ESTIMATOR_BATCH = 4096, 50176, 8
GPU_CASE = dict(B=32, N=50176, D=768)  # bf16 tokens, one order for the batch (a learned order)
HBM_GBPS = {"H200": 4800, "H100": 3350, "A100": 2039}  # peak bandwidth, GB/s


def _case(fn, scores: torch.Tensor, x: torch.Tensor):
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x)

    def run():
        scores.grad = x.grad = None
        y = fn(scores, x, TAU)
        (y * grad_out).sum().backward()

    return run


def _inputs(b: int, n: int, d: int, device, dtype=torch.float32, shared: bool = False):
    """Scores ``(B, N)`` (one ``(N,)`` for the batch when ``shared``), tokens ``(B, N, D)``."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn((n,) if shared else (b, n), generator=gen)
    x = torch.randn(b, n, d, generator=gen).to(dtype)
    return scores.to(device).requires_grad_(), x.to(device).requires_grad_()


def _estimator_case(n: int, device):
    est = E.create_estimator("softsort", num_tokens=n, tau=TAU, materialize_limit=0)
    est = est.to(device).train()
    x = torch.randn(ESTIMATOR_BATCH, n, DIM, generator=torch.Generator().manual_seed(0))
    x = x.to(device).requires_grad_()

    def run():
        est.zero_grad()
        x.grad = None
        out = est(x)
        assert out.soft is None  # above materialize_limit: applied, never formed
        (out.tokens * x.detach()).sum().backward()

    return run


def _floor_ms(device, b: int, n: int, d: int) -> float | None:
    """Forward + backward must read x and write y, then read grad y and x and write grad x:
    4 passes over ``B N D`` bf16 values, at the device's peak bandwidth."""
    name = torch.cuda.get_device_name(device)
    gbps = next((v for k, v in HBM_GBPS.items() if k in name), None)
    return None if gbps is None else 1e3 * 4 * b * n * d * 2 / (gbps * 1e9)


def run_benchmark(device: torch.device, sizes=SIZES, dim: int = DIM, repeats: int = 3):
    rows = []
    for b, n in sizes:
        scores, x = _inputs(b, n, dim, device)
        m = measure(_case(E.softsort_apply, scores, x), device, repeats)
        rows.append(dict(function="softsort_apply", B=b, N=n, D=dim, ms=1e3 * m.seconds,
                         peak_mb=m.peak_mb))  # fmt: skip
        if b * n * n <= DENSE_MAX:
            m = measure(_case(softsort_apply_ref, scores, x), device, repeats)
            rows.append(dict(function="dense softsort(s) @ x", B=b, N=n, D=dim,
                             ms=1e3 * m.seconds, peak_mb=m.peak_mb))  # fmt: skip
        del scores, x
    largest = max(n for _, n in sizes)
    m = measure(_estimator_case(largest, device), device, repeats)
    rows.append(dict(function="softsort estimator (train)", B=ESTIMATOR_BATCH, N=largest, D=DIM,
                     ms=1e3 * m.seconds, peak_mb=m.peak_mb))  # fmt: skip
    if device.type == "cuda":
        rows.append(shared_bf16_row(device, **GPU_CASE, repeats=repeats))
    return rows


def shared_bf16_row(device, B: int, N: int, D: int, repeats: int = 3) -> dict:
    """bf16 tokens ``(B, N, D)`` ordered by one score vector, forward + backward, beside the
    memory-bound floor where the device's bandwidth is known (None on a CPU)."""
    scores, x = _inputs(B, N, D, device, torch.bfloat16, shared=True)
    m = measure(_case(E.softsort_apply, scores, x), device, repeats)
    floor = _floor_ms(device, B, N, D) if device.type == "cuda" else None
    return dict(function="softsort_apply, bf16, one order", B=B, N=N, D=D, ms=1e3 * m.seconds,
                peak_mb=m.peak_mb, floor_ms=floor)  # fmt: skip


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets as rows: what was measured, the target, and whether it holds."""
    checks = []
    for b in sorted({r["B"] for r in rows if r["N"] == SPEED_N}):
        fast = find_row(rows, "softsort_apply", b, SPEED_N)
        dense = find_row(rows, "dense softsort(s) @ x", b, SPEED_N)
        if fast and dense:
            speedup = dense["ms"] / fast["ms"]
            checks.append(dict(
                target=f"N={SPEED_N} B={b} D={fast['D']}: >= 3x faster than dense",
                measured=f"{speedup:.1f}x ({fast['ms']:.1f} vs {dense['ms']:.1f} ms)",
                holds=speedup >= 3.0,
            ))  # fmt: skip
    large = find_row(rows, "softsort_apply", 1, LARGE_N)
    if large and large["D"] == DIM:
        checks.append(dict(
            target=f"N={LARGE_N} D={DIM} B=1: fwd+bwd <= 0.5 s",
            measured=f"{large['ms'] / 1e3:.3f} s", holds=large["ms"] <= 500,
        ))  # fmt: skip
        if large["peak_mb"] is not None:
            checks.append(dict(
                target=f"N={LARGE_N} D={DIM} B=1: <= 2 GB above a bare process",
                measured=f"{large['peak_mb'] / 1024:.2f} GB", holds=large["peak_mb"] <= 2048,
            ))  # fmt: skip
    est = find_row(rows, "softsort estimator (train)", ESTIMATOR_BATCH, LARGE_N)
    if est and est["peak_mb"] is not None:
        checks.append(dict(
            target=f"softsort estimator, train, N={LARGE_N}, B={ESTIMATOR_BATCH}: <= 2.5 GB",
            measured=f"{est['peak_mb'] / 1024:.2f} GB", holds=est["peak_mb"] <= 2.5 * 1024,
        ))  # fmt: skip
    return checks


def main(args) -> dict:
    device = torch.device(args.device)
    sizes = parse_sizes(args.sizes)
    print(f"# long-sequence benchmark on {device} ({torch.get_num_threads()} threads), "
          f"forward+backward, tau={TAU}, best of {args.repeats}")  # fmt: skip
    rows = run_benchmark(device, sizes, args.dim, args.repeats)
    checks = check_targets(rows)
    print_results(rows, ["function", "B", "N", "D", "ms", "peak_mb", "floor_ms"], checks)
    return {"device": str(device), "rows": rows, "checks": checks}
