"""Hard permutations, applying permutations to token sequences, and the result type estimators
return."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._checks import (
    NonFiniteError,
    check_count,
    check_float_tensor,
    check_permutation_index,
    check_same_device,
    check_square,
)


@dataclass
class PermutationOutput:
    """What every estimator returns.

    tokens: ``(B, N, D)`` reordered tokens (soft, straight-through or hard).
    index: ``(B, N)`` the hard permutation used or implied: slot ``i`` holds token ``index[b, i]``.
    soft: ``(B, N, N)`` soft permutation (an expanded view when the batch shares one), or None.
    log_prob: ``(B,)`` log-probability of ``index`` for score-function estimators, else None.
    aux: detached diagnostics (marginal error, entropy, ...), scalars or small tensors.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    soft: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


def hard_permutation(P: torch.Tensor) -> torch.Tensor:
    """The permutation ``(..., N)`` that maximizes ``sum_i P[i, index[i]]`` (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``), for ``P (..., N, N)``."""
    from scipy.optimize import linear_sum_assignment  # scipy loads on first use, not on import

    check_square("P", P)
    n = P.shape[-1]
    flat = P.detach().reshape(-1, n, n).to("cpu", torch.float64).numpy()
    if not np.isfinite(flat).all():
        nan, inf = int(np.isnan(flat).sum()), int(np.isinf(flat).sum())
        raise NonFiniteError(
            f"'P' should be finite but holds {nan} NaN and {inf} inf of {flat.size} "
            f"(shape {tuple(P.shape)})"
        )
    index = np.stack([linear_sum_assignment(m, maximize=True)[1] for m in flat])
    return torch.from_numpy(index).to(P.device).reshape(P.shape[:-1])


def apply_permutation(
    x: torch.Tensor,
    index: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Reorder the tokens of ``x (B, T, D)`` after its first ``num_prefix_tokens`` (e.g. a CLS
    token, which never moves), by a hard ``index`` (``(N,)`` or ``(B, N)``: slot ``i`` takes token
    ``index[i]``; every row must be a permutation of ``range(N)``) or a soft ``soft`` (``(N, N)``
    or ``(B, N, N)``: ``x_out = soft @ x``)."""
    check_float_tensor("x", x, min_dim=3)
    if x.dim() != 3:
        raise ValueError(f"'x' should be a 3d-tensor (B, T, D) but got {tuple(x.shape)}")
    if (index is None) == (soft is None):
        raise ValueError("give exactly one of 'index' (hard) or 'soft' (soft permutation)")
    num_prefix_tokens = check_count("num_prefix_tokens", num_prefix_tokens, minimum=0)
    if not num_prefix_tokens < x.shape[1]:
        raise ValueError(
            f"'num_prefix_tokens' should lie in [0, {x.shape[1]}) for 'x' of shape "
            f"{tuple(x.shape)} but got {num_prefix_tokens}"
        )
    prefix, body = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]  # body (B, N, D)
    b, n, _ = body.shape
    if index is not None:
        check_permutation_index("index", index, n)
        check_same_device(x=x, index=index)
        if index.dim() not in (1, 2) or (index.dim() == 2 and index.shape[0] not in (1, b)):
            raise ValueError(
                f"'index' should be (N,) or (B, N) = ({b}, {n}), got {tuple(index.shape)}"
            )
        body = _permute_tokens(body, index)
    else:
        check_square("soft", soft)
        check_same_device(x=x, soft=soft)
        if soft.shape[-1] != n or soft.dim() not in (2, 3):
            raise ValueError(
                f"'soft' should be (N, N) or (B, N, N) with N={n}, got {tuple(soft.shape)}"
            )
        body = soft.to(body.dtype) @ body  # (B, N, D)
    return torch.cat([prefix, body], dim=1) if num_prefix_tokens else body


def _permute_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i]]`` for ``x (B, N, D)`` and ``index (N,)``, ``(1, N)`` or ``(B, N)``,
    unchecked: the estimators' path for an index they have just built (a sort or a sample), where
    :func:`apply_permutation`'s permutation check would cost a device sync per call."""
    b, n, d = x.shape
    return x.gather(1, index.expand(b, n).unsqueeze(-1).expand(b, n, d))  # (B, N, D)
