"""``python -m diffsort_reorder.bench estimators``: forward+backward time and peak memory of every
estimator function, beside what a user would otherwise reach for.

References: POT's ``ot.sinkhorn`` and ``ot.bregman.sinkhorn_log`` looped over the batch (they take
one problem at a time), the plain unrolled log-domain Sinkhorn (``estimators.sinkhorn_ref``), and
``torchsort.soft_rank`` called directly. ``gumbel_sinkhorn`` also runs as its estimator calls it
(a one-hot log-alpha plus what training adds, 20 iterations) at tau 0.1 and 0.3. Targets checked
at the end:
- speed: our ``sinkhorn`` at B=32, N=196, 50 iterations at least 3x faster than the faster POT
  solver, with the same plan within 1e-5;
- memory: the implicit backward at B=8, N=1024, 50 iterations needs at least 10x less memory than
  the unrolled log-domain backward;
- the estimator's gumbel_sinkhorn at B=32, N=196: tau 0.1 within 1.5x of tau 0.3 (a slower cold
  tau means the call fell back to log-domain rounds).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import ot
import torch
import torchsort

import estimators as E

from . import find_row, measure, parse_sizes, print_results

N_ITERS = 50
SIZES = [(32, 64), (32, 196), (8, 1024)]
SPEED_CASE, MEMORY_CASE = (32, 196), (8, 1024)


def _pot_looped(solver: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        uniform = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT warns that 50 iterations did not reach stopThr=0
            plans = [solver(uniform, uniform, -m, 1.0, numItermax=N_ITERS, stopThr=0.0) for m in x]
        return torch.stack(plans) * n

    return run


# name -> (input kind, function of the input). "matrix" inputs are (B, N, N), "scores" (B, N),
# "estimator" (B, N, N) as the gumbel_sinkhorn estimator's log-alpha looks in training.
SINKHORNS: dict[str, Callable] = {
    "sinkhorn (ours, unrolled)": lambda x: E.sinkhorn(x, N_ITERS),
    "sinkhorn (ours, implicit)": lambda x: E.sinkhorn(x, N_ITERS, backward="implicit"),
    "ref: log-domain unrolled": lambda x: E.sinkhorn_ref(x, N_ITERS),
    "ref: POT ot.sinkhorn, looped": _pot_looped(ot.sinkhorn),
    "ref: POT sinkhorn_log, looped": _pot_looped(ot.bregman.sinkhorn_log),
}
OTHERS: dict[str, tuple[str, Callable]] = {
    "gumbel_sinkhorn": ("matrix", lambda x: E.gumbel_sinkhorn(x, 1.0, N_ITERS)),
    "gumbel_sinkhorn (estimator, tau 0.3)": ("estimator", lambda x: E.gumbel_sinkhorn(x, 0.3)),
    "gumbel_sinkhorn (estimator, tau 0.1)": ("estimator", lambda x: E.gumbel_sinkhorn(x, 0.1)),
    "softsort": ("scores", lambda s: E.softsort(s, 1.0)),
    "neuralsort": ("scores", lambda s: E.neuralsort(s, 1.0)),
    "ot_sort": ("scores", lambda s: E.ot_sort(s, 0.01, N_ITERS)),
    "soft_rank_permutation": ("scores", lambda s: E.soft_rank_permutation(s, 1.0)),
    "ref: torchsort.soft_rank": ("scores", lambda s: torchsort.soft_rank(s, "l2", 1.0)),
    "plackett_luce sample+log_prob": (
        "scores",
        lambda s: E.plackett_luce_log_prob(s, E.plackett_luce_sample(s)[0]),
    ),
}


def _case(fn: Callable, x: torch.Tensor):
    """A closure running ``fn`` forward and backward under a fixed random cotangent."""
    out = fn(x).detach()
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(x.device)

    def run():
        x.grad = None
        y = fn(x)
        (y * grad_out).sum().backward()
        return y

    return run


def run_benchmark(device: torch.device, sizes=SIZES, repeats: int = 3) -> list[dict]:
    rows = []
    for b, n in sizes:
        gen = torch.Generator().manual_seed(0)
        matrix = torch.randn(b, n, n, generator=gen).to(device).requires_grad_()
        scores = torch.randn(b, n, generator=gen).to(device).requires_grad_()
        one_hot = torch.eye(n)[torch.randperm(n, generator=gen)]
        learned = (one_hot + 0.5 * torch.randn(b, n, n, generator=gen)).to(device).requires_grad_()
        inputs = {"matrix": matrix, "scores": scores, "estimator": learned}
        plans = {}
        for name, fn in SINKHORNS.items():
            if "POT" in name and device.type == "cuda" and n >= 1024:
                continue  # a Python loop of GPU launches: nothing to learn at this size
            m = measure(_case(fn, matrix), device, repeats)
            plans[name] = fn(matrix).detach()
            rows.append(dict(function=name, B=b, N=n, ms=1e3 * m.seconds, peak_mb=m.peak_mb))
        pot = plans.get("ref: POT ot.sinkhorn, looped")
        for row in rows[-len(plans) :]:
            if pot is not None:
                row["max_abs_diff_vs_pot"] = float((plans[row["function"]] - pot).abs().max())
        for name, (kind, fn) in OTHERS.items():
            torch.manual_seed(0)  # the same Gumbel noise for both taus
            m = measure(_case(fn, inputs[kind]), device, repeats)
            rows.append(dict(function=name, B=b, N=n, ms=1e3 * m.seconds, peak_mb=m.peak_mb))
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets as rows: what was measured, the target, and whether it holds."""
    checks = []
    ours = find_row(rows, "sinkhorn (ours, unrolled)", *SPEED_CASE)
    pots = [find_row(rows, f, *SPEED_CASE) for f in SINKHORNS if "POT" in f]
    pots = [p for p in pots if p is not None]
    if ours and pots:
        fastest = min(pots, key=lambda r: r["ms"])
        speedup = fastest["ms"] / ours["ms"]
        diff = ours.get("max_abs_diff_vs_pot")
        checks.append(
            dict(
                target="sinkhorn B=32 N=196 x50 fwd+bwd >= 3x faster than fastest POT",
                measured=f"{speedup:.1f}x vs {fastest['function']} "
                f"({ours['ms']:.1f} vs {fastest['ms']:.1f} ms)",
                holds=speedup >= 3.0,
            )
        )
        checks.append(
            dict(
                target="same plan as POT within 1e-5",
                measured=f"largest plan difference {diff:.2e}",
                holds=diff is not None and diff <= 1e-5,
            )
        )
    implicit = find_row(rows, "sinkhorn (ours, implicit)", *MEMORY_CASE)
    unrolled = find_row(rows, "ref: log-domain unrolled", *MEMORY_CASE)
    if implicit and unrolled and implicit["peak_mb"] and unrolled["peak_mb"]:
        ratio = unrolled["peak_mb"] / implicit["peak_mb"]
        mb = f"{implicit['peak_mb']:.0f} vs {unrolled['peak_mb']:.0f} MB"
        checks.append(
            dict(
                target="implicit backward B=8 N=1024 x50: >= 10x less memory than unrolled",
                measured=f"{ratio:.1f}x ({mb})",
                holds=ratio >= 10.0,
            )
        )
    cold = find_row(rows, "gumbel_sinkhorn (estimator, tau 0.1)", *SPEED_CASE)
    warm = find_row(rows, "gumbel_sinkhorn (estimator, tau 0.3)", *SPEED_CASE)
    if cold and warm:
        ratio = cold["ms"] / warm["ms"]
        checks.append(
            dict(
                target="gumbel_sinkhorn as the estimator calls it, B=32 N=196: tau 0.1 within "
                "1.5x of tau 0.3",
                measured=f"{ratio:.2f}x ({cold['ms']:.1f} vs {warm['ms']:.1f} ms)",
                holds=ratio <= 1.5,
            )
        )
    return checks


def main(args) -> dict:
    device = torch.device(args.device)
    sizes = parse_sizes(args.sizes)
    print(f"# estimators benchmark on {device} ({torch.get_num_threads()} threads), "
          f"forward+backward, {N_ITERS} Sinkhorn iterations, best of {args.repeats}")  # fmt: skip
    rows = run_benchmark(device, sizes, args.repeats)
    checks = check_targets(rows)
    print_results(rows, ["function", "B", "N", "ms", "peak_mb", "max_abs_diff_vs_pot"], checks)
    return {"device": str(device), "rows": rows, "checks": checks}
