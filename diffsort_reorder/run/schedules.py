"""Schedules as small pure functions of the step.

``tau_at`` is evaluated at every optimizer step of the policy phase. REOrder's released code built
a per-step schedule but advanced it once per epoch, so its temperature peaked near 0.002 instead
of 0.2; calling ``tau_at(step, ...)`` with the global step of the phase cannot make that mistake.
"""

from __future__ import annotations

import math


def _constant(progress: float) -> float:
    return 1.0


def _linear(progress: float) -> float:
    return 1.0 - progress


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _triangular(progress: float) -> float:
    return 1.0 - abs(2.0 * progress - 1.0)


TAU_SCHEDULES = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "triangular": _triangular,
}


def tau_at(
    step: int, total_steps: int, kind: str = "triangular", tau_max: float = 0.2, tau_min=0.0
) -> float:
    """The temperature at ``step`` of a phase of ``total_steps`` steps: ``tau_min + (tau_max -
    tau_min) * shape(step / (total_steps - 1))``. ``constant`` stays at ``tau_max``; ``linear`` and
    ``cosine`` fall from ``tau_max`` to ``tau_min``; ``triangular`` rises from ``tau_min`` to
    ``tau_max`` at mid-phase and falls back (REOrder's 0 -> 0.2 -> 0)."""
    if kind not in TAU_SCHEDULES:
        raise ValueError(f"unknown tau schedule {kind!r}; available: {', '.join(TAU_SCHEDULES)}")
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"'step' should lie in [0, {total_steps}) but got {step}")
    if not 0 <= tau_min <= tau_max:
        raise ValueError(f"need 0 <= tau_min <= tau_max but got {tau_min}, {tau_max}")
    progress = step / (total_steps - 1) if total_steps > 1 else 1.0
    return tau_min + (tau_max - tau_min) * TAU_SCHEDULES[kind](progress)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate's factor at ``step``: linear warm-up to 1, then cosine decay to 0 at
    ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def constant_lr(step: int) -> float:
    """A factor of 1 at every step (the orderer's learning rate)."""
    return 1.0


def phase_at(epoch: int, fixed_epochs: int, policy_epochs: int) -> str:
    """REOrder's curriculum: ``fixed`` (initial order), ``policy`` (learning it), ``frozen``."""
    if epoch < fixed_epochs:
        return "fixed"
    return "policy" if epoch < fixed_epochs + policy_epochs else "frozen"
