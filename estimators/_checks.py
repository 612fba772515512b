"""Argument checks shared by the public functions: each error names the argument, what it got and
what is accepted."""

from __future__ import annotations

import math

import torch


def check_float_tensor(name: str, x: object, min_dim: int = 1) -> torch.Tensor:
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
    check_float_tensor(name, x, min_dim=2)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"'{name}' should be square in its last two dimensions (..., N, N) "
            f"but got shape {tuple(x.shape)}"
        )
    return x


def check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{name}' should be a positive number but got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"'{name}' should be a positive finite number but got {value}")
    return float(value)


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' should be an int >= {minimum} but got {value!r}")
    if value < minimum:
        raise ValueError(f"'{name}' should be an int >= {minimum} but got {value}")
    return value


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"'{name}' on {device}" for name, device in devices.items())
        raise ValueError(f"tensors should be on one device but got {listed}")


def check_permutation_index(name: str, index: object, n: int) -> torch.Tensor:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"'{name}' should be a LongTensor but got {type(index).__name__}")
    if index.dtype != torch.long:
        raise TypeError(f"'{name}' should be a LongTensor (torch.long) but got dtype {index.dtype}")
    if index.dim() < 1 or index.shape[-1] != n:
        raise ValueError(f"'{name}' should have shape (..., {n}) but got {tuple(index.shape)}")
    return index
