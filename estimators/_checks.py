"""Argument checks shared by the public functions: each error names the argument, what it got and
what is accepted.

Numbers may be Python, numpy or 0-d tensor scalars (what a YAML config, an Optuna trial or a
schedule computed in torch hands over); bools are refused everywhere, since ``tau=True`` is a
typo, not a temperature.
"""

from __future__ import annotations

import math
import numbers

import torch

REAL = "a real number (int, float, numpy scalar or 0-d tensor; not a bool)"


def _as_real(name: str, value: object, accepted: str) -> int | float:
    """``value`` as a Python int or float, or a TypeError naming ``name`` and ``accepted``."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(
                f"'{name}' should be {accepted} but got a tensor of shape {tuple(value.shape)} "
                f"and dtype {value.dtype}"
            )
        return value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # np.bool_ is not Real
        raise TypeError(f"'{name}' should be {accepted} but got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_real(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (closed unless
    ``low_open``/``high_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    accepted = f"a finite real number in {interval}"
    x = float(_as_real(name, value, f"{accepted}: {REAL}"))
    above = x > low if low_open else x >= low
    below = x < high if high_open else x <= high
    if not (math.isfinite(x) and above and below):
        raise ValueError(f"'{name}' should be {accepted} but got {x:g}")
    return x


def check_positive(name: str, value: object) -> float:
    """``value > 0`` and finite, as a float."""
    x = float(_as_real(name, value, f"a positive number: {REAL}"))
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"'{name}' should be a positive finite number but got {x:g}")
    return x


def check_nonnegative(name: str, value: object) -> float:
    """``value >= 0`` and finite, as a float."""
    x = float(_as_real(name, value, f"a number >= 0: {REAL}"))
    if not (x >= 0 and math.isfinite(x)):
        raise ValueError(f"'{name}' should be a finite number >= 0 but got {x:g}")
    return x


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """A whole number ``>= minimum`` (``3``, ``3.0``, ``np.int64(3)``, ``torch.tensor(3)``), as
    an int."""
    accepted = f"an int >= {minimum}"
    x = _as_real(name, value, f"{accepted} (int, numpy or 0-d tensor integer; not a bool)")
    if isinstance(x, float):
        if not x.is_integer():
            raise ValueError(f"'{name}' should be {accepted} but got {x:g}")
        x = int(x)
    if x < minimum:
        raise ValueError(f"'{name}' should be {accepted} but got {x}")
    return x


class NonFiniteError(ValueError, FloatingPointError):
    """A tensor argument holds NaN or inf. A ValueError to a caller who checks what it passes; a
    FloatingPointError to a training loop, which ends a run on it as on a non-finite loss."""


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` unless it holds NaN or inf (a :class:`NonFiniteError` naming ``name``, with the
    counts). Costs one reduction and, on a GPU, one host sync: the public functions pay it per
    call; the estimators' training steps skip it where nothing else syncs (a non-finite value
    reaches the loss there, which the loop checks) and check their parameters in eval."""
    if bool(torch.isfinite(x).all()):
        return x
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    raise NonFiniteError(
        f"'{name}' should be finite but holds {nan} NaN and {inf} inf of "
        f"{x.numel()} (shape {tuple(x.shape)})"
    )


def check_choice(name: str, value: object, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them:
    ``'<name>' should be one of a, b, c but got <value!r>``."""
    choices = tuple(choices)
    try:
        known = value in choices
    except (TypeError, ValueError):  # an array's ambiguous truth value
        known = False
    if not known:
        listed = ", ".join(str(c) for c in choices)
        raise ValueError(f"'{name}' should be one of {listed} but got {value!r}")
    return value


def check_float_tensor(name: str, x: object, min_dim: int = 1) -> torch.Tensor:
    """A floating-point tensor with at least ``min_dim`` dimensions and ``N >= 1`` items."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"'{name}' should be a torch.Tensor but got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"'{name}' should be a floating-point tensor but got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"'{name}' should have at least {min_dim} dimension(s) but got shape {tuple(x.shape)}"
        )
    if x.shape[-1] == 0:
        raise ValueError(f"'{name}' should have N >= 1 items but got shape {tuple(x.shape)}")
    return x


def check_square(name: str, x: torch.Tensor) -> torch.Tensor:
    """A floating-point tensor ``(..., N, N)``."""
    check_float_tensor(name, x, min_dim=2)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"'{name}' should be square in its last two dimensions (..., N, N) "
            f"but got shape {tuple(x.shape)}"
        )
    return x


def check_same_device(**tensors: torch.Tensor) -> None:
    """All the given tensors (None skipped) on one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"'{name}' on {device}" for name, device in devices.items())
        raise ValueError(f"tensors should be on one device but got {listed}")


def check_permutation_index(name: str, index: object, n: int) -> torch.Tensor:
    """A LongTensor ``(..., n)`` each of whose rows holds every one of ``0 .. n-1`` exactly once.

    The value check reads the tensor (a device sync on GPU): the estimators' own indices, fresh
    from a sort or a sampler, skip it.
    """
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"'{name}' should be a LongTensor but got {type(index).__name__}")
    if index.dtype != torch.long:
        raise TypeError(f"'{name}' should be a LongTensor (torch.long) but got dtype {index.dtype}")
    if index.dim() < 1 or index.shape[-1] != n:
        raise ValueError(f"'{name}' should have shape (..., {n}) but got {tuple(index.shape)}")
    if index.is_meta or index.numel() == 0:  # no values to read
        return index
    rows = index.reshape(-1, n)  # (R, N)
    identity = torch.arange(n, device=index.device).expand_as(rows)
    if not torch.equal(rows.sort(-1).values, identity):
        raise ValueError(_not_a_permutation(name, index, n))
    return index


def _not_a_permutation(name: str, index: torch.Tensor, n: int) -> str:
    """The message for the first row that is not a permutation: its first entry that is out of
    range or repeats an earlier one."""
    rows = index.detach().reshape(-1, n).cpu()
    for r, row in enumerate(rows.tolist()):
        seen = set()
        for value in row:
            if not 0 <= value < n:
                problem = f"has {value} (out of range)"
            elif value in seen:
                problem = f"repeats {value}"
            else:
                seen.add(value)
                continue
            where = ""
            if index.dim() > 1:
                coords = torch.unravel_index(torch.tensor(r), index.shape[:-1])
                label = int(coords[0]) if len(coords) == 1 else tuple(int(c) for c in coords)
                where = f" in every row but row {label}"
            else:
                where = " but it"
            return f"'{name}' should be a permutation of range({n}){where} {problem}"
    raise AssertionError("called on a valid permutation")  # internal invariant
