"""Schedules as small pure functions of the step.

``tau_at`` is evaluated at every optimizer step of the policy phase. REOrder's released code built
a per-step schedule but advanced it once per epoch, so its temperature peaked near 0.002 instead
of 0.2; calling ``tau_at(step, ...)`` with the global step of the phase cannot make that mistake.

The model's learning rate restarts for the frozen phase (``trainer.lr_restart``): one warm-up +
cosine over all epochs leaves REOrder's frozen phase of 2 in 8 epochs about 3% of the learning-rate
mass (REOrder's own runs give it 26%), so a learned order would be judged after almost no
re-adaptation. The orderer follows its own schedule over the policy phase, never the model's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable


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


def restarted_lr_factor(step: int, warmup_steps: int, total_steps: int, restart_step: int) -> float:
    """:func:`lr_factor` over ``[0, restart_step)``, then a fresh one over ``[restart_step,
    total_steps)`` whose warm-up takes the same share of it, so that each part's learning-rate mass
    follows its length. ``restart_step`` outside ``(0, total_steps)``: :func:`lr_factor` alone."""
    if not 0 < restart_step < total_steps:
        return lr_factor(step, warmup_steps, total_steps)
    if step < restart_step:
        return lr_factor(step, warmup_steps, restart_step)
    length = total_steps - restart_step
    warmup = round(min(warmup_steps, restart_step) * length / restart_step)
    return lr_factor(step - restart_step, warmup, length)


POLICY_LR_SCHEDULES = ("constant", "cosine")


def policy_lr_factor(
    step: int, start_step: int, policy_steps: int, warmup_steps: int = 0, kind: str = "constant"
) -> float:
    """The orderer's learning-rate factor at global ``step``, for a policy phase of
    ``policy_steps`` steps from ``start_step``: a linear warm-up from ~0 over its first
    ``warmup_steps`` (REOrder's policy warm-up), then 1 (``constant``) or a cosine decay to 0 at the
    phase's end (``cosine``). Outside the phase, where the orderer does not learn, the factor is
    that of the phase's nearest step; no warm-up and ``constant``: 1 at every step."""
    if kind not in POLICY_LR_SCHEDULES:
        raise ValueError(
            f"unknown policy lr schedule {kind!r}; available: {', '.join(POLICY_LR_SCHEDULES)}"
        )
    k = min(max(step - start_step, 0), max(1, policy_steps) - 1)  # the step within the phase
    if k < warmup_steps:
        return (k + 1) / warmup_steps
    progress = (k - warmup_steps) / max(1, policy_steps - warmup_steps)
    return TAU_SCHEDULES[kind](progress)


def phase_at(epoch: int, fixed_epochs: int, policy_epochs: int) -> str:
    """REOrder's curriculum: ``fixed`` (initial order), ``policy`` (learning it), ``frozen``."""
    if epoch < fixed_epochs:
        return "fixed"
    return "policy" if epoch < fixed_epochs + policy_epochs else "frozen"


# trainer.lr_restart: the epoch at which the model's schedule starts afresh (0: never).
LR_RESTARTS = {
    "frozen": lambda curriculum: curriculum.fixed_epochs + curriculum.policy_epochs,
    "none": lambda curriculum: 0,
}


def model_lr(trainer, steps_per_epoch: int) -> Callable[[int], float]:
    """The model's learning-rate factor, a function of the global step, as the trainer config
    ``trainer`` asks for it (``none``: :func:`lr_factor` over all epochs, as before)."""
    if trainer.lr_restart not in LR_RESTARTS:
        raise ValueError(
            f"'trainer.lr_restart' should be one of {', '.join(LR_RESTARTS)} but got "
            f"{trainer.lr_restart!r}"
        )
    restart = LR_RESTARTS[trainer.lr_restart](trainer.curriculum) * steps_per_epoch
    return functools.partial(
        restarted_lr_factor, warmup_steps=trainer.warmup_epochs * steps_per_epoch,
        total_steps=trainer.epochs * steps_per_epoch, restart_step=restart,
    )  # fmt: skip


def policy_lr(trainer, steps_per_epoch: int) -> Callable[[int], float]:
    """The orderer's learning-rate factor, a function of the global step (``trainer.policy``)."""
    c, p = trainer.curriculum, trainer.policy
    return functools.partial(
        policy_lr_factor, start_step=c.fixed_epochs * steps_per_epoch,
        policy_steps=c.policy_epochs * steps_per_epoch,
        warmup_steps=p.warmup_epochs * steps_per_epoch, kind=p.lr_schedule,
    )  # fmt: skip


def lr_mass(trainer, steps_per_epoch: int) -> dict[str, float]:
    """Each curriculum phase's share of the model's learning-rate mass (the sum of its per-step
    factors) under the trainer config ``trainer``: ``{"fixed", "policy", "frozen"}``, summing to 1
    (a phase the run does not reach has 0)."""
    factor, c = model_lr(trainer, steps_per_epoch), trainer.curriculum
    mass = dict.fromkeys(("fixed", "policy", "frozen"), 0.0)
    for step in range(trainer.epochs * steps_per_epoch):
        phase = phase_at(step // steps_per_epoch, c.fixed_epochs, c.policy_epochs)
        mass[phase] += factor(step)
    total = sum(mass.values())
    return {phase: m / total for phase, m in mass.items()}
