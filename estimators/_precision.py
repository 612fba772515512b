"""Full precision for the maths that turns scores into permutations, whatever autocast says.

Under bf16 autocast (the GPU default) a score of -0.503 rounds to -0.5; divided by a small ``tau``
that error becomes whole nats of Plackett-Luce log-probability and whole rows of a NeuralSort
matrix. So every score-to-permutation function runs in float32 (float64 input stays float64) with
autocast off; only the final ``P @ tokens`` may follow the tokens' dtype.
"""

from __future__ import annotations

import functools

import torch

HALF = (torch.float16, torch.bfloat16)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half precision to float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in HALF else x


def full_precision(fn):
    """Run ``fn(x, ...)`` with autocast off on ``x``'s device and a half ``x`` upcast to float32."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        if not isinstance(x, torch.Tensor):  # let fn's own check name the argument
            return fn(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return fn(upcast(x), *args, **kwargs)

    return wrapper
