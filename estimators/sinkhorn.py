"""Sinkhorn normalization and Gumbel-Sinkhorn (Mena et al. 2018, arXiv 1802.08665).

``sinkhorn(log_alpha)`` alternately normalizes the rows and columns of ``exp(log_alpha)`` and
returns a doubly-stochastic ``P (..., N, N)``. Once converged it is the entropic optimal transport
plan between uniform marginals with cost ``-log_alpha`` and ``reg = 1``, times ``N``: POT's
``ot.sinkhorn(a, b, -log_alpha, 1.0) * N``.

How it runs. Each round normalizes the columns, then the rows, so the rows of ``P`` sum to 1
exactly and the columns within the marginal error (reported by ``marginal_error``). The first
round is taken in the log domain, which leaves every row and column with an entry of at least
``1/N``, so ``log_alpha`` of magnitude 1e6 (1e3 at tau = 1e-3) stays finite. The remaining rounds
are scaling updates - one batched matrix-vector product each instead of an exp over ``N^2``
entries - with the gauge between the two scalings balanced every round (their ranges split
evenly), so that neither drifts to overflow; they give the same iterates as log-domain rounds.
Should a plan still come out non-finite (a support the scalings cannot follow), the call falls
back to log-domain rounds under autograd, several times slower: :func:`fallback_count` counts
those calls, the estimators report them in ``aux["log_domain_fallbacks"]``, and the first one in a
process warns (:class:`SinkhornFallbackWarning`). Half-precision input (autocast) is computed in
float32. Input holding NaN or +inf (``-inf`` is a forbidden pair, allowed while every row and column
keeps a finite entry) is refused there with a :class:`~estimators._checks.NonFiniteError` naming
``log_alpha``: the check runs only once a plan comes out non-finite, so it costs nothing else.

Gradients, chosen with ``backward``:
- ``"unrolled"`` (default): the exact gradient of the iterations that ran. Our backward keeps only
  the scaling vectors ``(T, N)`` and folds the ``2T`` outer products of the reverse pass into two
  batched matrix products, instead of autograd's ``N x N`` buffer per iteration.
- ``"implicit"``: differentiates the fixed point (``P = diag(u) K diag(v)`` with unit marginals) by
  solving one ``N x N`` linear system; it keeps nothing of the iterations and equals the unrolled
  gradient once converged.

``sinkhorn_ref`` is the plain unrolled log-domain loop under autograd: the reference both paths are
tested against.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from ._checks import (
    NonFiniteError,
    check_choice,
    check_count,
    check_nonnegative,
    check_positive,
    check_square,
)
from ._precision import full_precision, upcast

BACKWARDS = ("unrolled", "implicit")


class SinkhornConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``n_iters`` before its marginal error fell below ``tol``."""


class SinkhornFallbackWarning(UserWarning):
    """A Sinkhorn call left its scaling path for the slower log-domain rounds."""


_fallbacks = {"count": 0}


def fallback_count() -> int:
    """How many :func:`sinkhorn` calls in this process have fallen back to log-domain rounds."""
    return _fallbacks["count"]


def _note_fallback(shape: torch.Size, dtype: torch.dtype) -> None:
    _fallbacks["count"] += 1
    if _fallbacks["count"] == 1:
        warnings.warn(
            f"sinkhorn on log_alpha {tuple(shape)} in {dtype} overflowed its scalings and re-ran "
            f"in the log domain (exact, but several times slower); later fallbacks are counted "
            f"in estimators.sinkhorn.fallback_count() and an estimator's "
            f"aux['log_domain_fallbacks'], not warned again",
            SinkhornFallbackWarning,
            stacklevel=3,
        )


def marginal_error(P: torch.Tensor) -> torch.Tensor:
    """Largest deviation of a row or column sum from 1, per matrix: ``(..., N, N) -> (...)``."""
    rows = (P.sum(-1) - 1).abs().amax(-1)
    cols = (P.sum(-2) - 1).abs().amax(-1)
    return torch.maximum(rows, cols)


def mean_marginal_error(P: torch.Tensor) -> torch.Tensor:
    """How far ``P (..., N, N)`` is from doubly stochastic, per matrix: ``(...)``, defined as

    ``err(P) = (1/N) sum_i |sum_j P[i, j] - 1| + (1/N) sum_j |sum_i P[i, j] - 1|``,

    the L1 violation of both marginals of the transport plan ``P / N`` (uniform target marginals
    ``1/N``; POT's stopping error measures one marginal's violation the same way, in a norm of its
    choice). 0 exactly when every row and column sums to 1. A Sinkhorn round ends by normalizing
    one side, so for :func:`sinkhorn`'s output the first term is 0 and ``err`` is the mean
    absolute deviation of the column sums from 1."""
    check_square("P", P)
    rows = (P.sum(-1) - 1).abs().mean(-1)  # (...)
    cols = (P.sum(-2) - 1).abs().mean(-1)  # (...)
    return rows + cols


def _log_round(x: torch.Tensor) -> torch.Tensor:
    """One Sinkhorn round in the log domain: rows, then columns."""
    x = x - x.logsumexp(-1, keepdim=True)
    return x - x.logsumexp(-2, keepdim=True)


def _vecmat(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``v^T M`` batched: ``(B, N), (B, N, N) -> (B, N)``. Written as a row vector times a
    matrix because torch's batched ``M @ v`` is ~10x slower on CPU; ``M v`` is ``_vecmat(v, M^T)``
    with ``M^T`` contiguous."""
    return torch.bmm(v.unsqueeze(-2), M).squeeze(-2)


class _Rounds(NamedTuple):
    u: torch.Tensor  # (B, N) last row scaling
    v: torch.Tensor  # (B, N) last column scaling
    us: list  # u_t
    vs: list  # v_t, as computed
    v_ins: list  # the v that entered round t: 1 first, then v_{t-1} / c_{t-1}
    cs: list  # c_t = sqrt(max v_t / max u_t), (B, 1)


def _scaling_rounds(
    K: torch.Tensor, rounds: int, tol: float | None, check_every: int, record: bool
) -> _Rounds:
    """Up to ``rounds`` scaling rounds ``u = 1 / (K v)``, ``v = 1 / (K^T u)`` on ``K (B, N, N)``.

    ``(u c, v / c)`` give the same plan for any ``c > 0``, and left alone ``u`` and ``v`` drift
    apart until they overflow (``max v`` ~ 1e30 after 100 rounds on hard inputs). So the ``v``
    that enters each round is divided by ``c = sqrt(max v / max u)``, which gives the next ``u``
    and ``v`` the same largest entry: the range splits evenly between them. (Dividing by
    ``max v`` instead pins ``v`` at 1 and pushes the whole range into ``u``, which overflows the
    backward's squares in float32 at tau 0.1, N = 196.) The plan ``diag(u) K diag(v)`` of the
    last round is unchanged, and because it does not depend on ``c`` at all, holding ``c``
    constant keeps the gradient exact."""
    Kt = K.transpose(-1, -2).contiguous()
    v_in = K.new_ones(K.shape[:-1])  # (B, N)
    u = v = v_in
    out = _Rounds(u, v, [], [], [], [])
    for t in range(rounds):
        u = 1.0 / _vecmat(v_in, Kt)  # 1 / (K v_in)
        v = 1.0 / _vecmat(u, K)  # 1 / (K^T u): columns of diag(u) K diag(v) sum to 1
        c = (v.amax(-1, keepdim=True) / u.amax(-1, keepdim=True)).sqrt()  # (B, 1)
        if record:
            out.us.append(u)
            out.vs.append(v)
            out.v_ins.append(v_in)
            out.cs.append(c)
        v_in = v / c
        if tol is not None and ((t + 1) % check_every == 0 or t + 1 == rounds):
            # Columns are exact after the v update; the rows carry the whole error.
            if float((u * _vecmat(v, Kt) - 1).abs().max()) < tol:
                break
    return out._replace(u=u, v=v)


def _scale(u: torch.Tensor, K: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u.unsqueeze(-1) * K * v.unsqueeze(-2)  # diag(u) K diag(v)


class _UnrolledSinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, K, rounds, tol, check_every):
        r = _scaling_rounds(K, rounds, tol, check_every, record=True)
        stack = lambda xs: torch.stack(xs, 1)  # noqa: E731  (B, T, N) or (B, T, 1)
        U, V = stack(r.us), stack(r.vs)
        ctx.save_for_backward(K, U, V, stack(r.v_ins), stack(r.cs))
        # The backward squares the scalings: past this size it would overflow. A NaN plan makes
        # ``sinkhorn`` take the log-domain path, whose gradient stays finite.
        limit = torch.finfo(K.dtype).max ** 0.25
        if not (torch.isfinite(U).all() and U.max() < limit and V.max() < limit):
            return torch.full_like(K, float("nan"))
        return _scale(r.u, K, r.v)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_P):
        K, U, V, V_in, C = ctx.saved_tensors
        Kt = K.transpose(-1, -2).contiguous()
        rounds = U.shape[1]
        GK = grad_P * K
        grad_K = grad_P * (U[:, -1].unsqueeze(-1) * V[:, -1].unsqueeze(-2))
        grad_u = (GK * V[:, -1].unsqueeze(-2)).sum(-1)  # (B, N), from P = diag(u_T) K diag(v_T)
        grad_v = _vecmat(U[:, -1], GK)
        grad_w, grad_z = [], []  # adjoints of K^T u_t and K v_in_t, latest round first
        for t in range(rounds - 1, -1, -1):
            gw = -grad_v * V[:, t] ** 2  # v_t = 1 / (K^T u_t)
            grad_u = grad_u + _vecmat(gw, Kt)  # + K gw
            gz = -grad_u * U[:, t] ** 2  # u_t = 1 / (K v_in_t)
            if t:  # v_in_t = v_{t-1} / c_{t-1}, with c held constant
                grad_v = _vecmat(gz, K) / C[:, t - 1]  # K^T gz / c
            grad_u = torch.zeros_like(grad_u)  # u_{t-1} feeds only v_{t-1}
            grad_w.append(gw)
            grad_z.append(gz)
        grad_w = torch.stack(grad_w[::-1], 1)  # (B, T, N)
        grad_z = torch.stack(grad_z[::-1], 1)  # (B, T, N)
        # sum_t u_t gw_t^T + gz_t v_in_t^T, as two batched products instead of 2T outer products
        grad_K = grad_K + U.transpose(1, 2) @ grad_w + grad_z.transpose(1, 2) @ V_in
        return grad_K, None, None, None


class _ImplicitSinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rounds, tol, check_every):
        K = _log_round(x).exp()
        r = _scaling_rounds(K, rounds, tol, check_every, record=False)
        P = _scale(r.u, K, r.v)
        ctx.save_for_backward(P)
        return P

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_P):
        # log P = x + f 1^T + 1 g^T with unit marginals. Differentiating the marginal constraints
        # gives grad_x = P * (G - lam 1^T - 1 mu^T), where [I P; P^T I] [lam; mu] = [a; b],
        # a = (P*G) 1, b = (P*G)^T 1. Eliminating lam: (I - P^T P) mu = b - P^T a, singular along
        # 1 only (1^T rhs = 0), so adding 1 1^T / N makes it invertible without changing mu.
        (P,) = ctx.saved_tensors
        n = P.shape[-1]
        PG = P * grad_P
        a, b = PG.sum(-1), PG.sum(-2)  # (B, N)
        Pt = P.transpose(-1, -2)
        eye = torch.eye(n, dtype=P.dtype, device=P.device)
        ridge = n * torch.finfo(P.dtype).eps  # keeps the solve finite when P is a permutation
        M = (1.0 + ridge) * eye - Pt @ P + 1.0 / n  # (B, N, N)
        mu = torch.linalg.solve(M, b - _vecmat(a, P))  # (B, N)
        lam = a - _vecmat(mu, Pt)
        return P * (grad_P - lam.unsqueeze(-1) - mu.unsqueeze(-2)), None, None, None


def sinkhorn(
    log_alpha: torch.Tensor,
    n_iters: int = 20,
    tol: float | None = None,
    backward: str = "unrolled",
    check_every: int = 10,
) -> torch.Tensor:
    """Doubly-stochastic ``P (..., N, N)`` from ``log_alpha (..., N, N)``.

    Args:
        log_alpha: log of a positive matrix (a score of token ``j`` for slot ``i``).
        n_iters: rounds of row + column normalization (at most this many with ``tol``).
        tol: stop early once the largest marginal error is below ``tol`` (checked every
            ``check_every`` rounds); warns with :class:`SinkhornConvergenceWarning` if never.
        backward: ``"unrolled"`` (exact gradient of the rounds that ran) or ``"implicit"``
            (fixed-point gradient; no memory of the iterations).
    """
    check_square("log_alpha", log_alpha)
    n_iters = check_count("n_iters", n_iters)
    check_every = check_count("check_every", check_every)
    if tol is not None:
        tol = check_positive("tol", tol)
    check_choice("backward", backward, BACKWARDS)
    shape = log_alpha.shape
    # Rounds normalize the columns, then the rows, so the rows of P sum to 1 exactly and the
    # columns within the marginal error: run the row-first code on the transpose.
    x = log_alpha.reshape(-1, shape[-2], shape[-1]).transpose(-1, -2)  # (B, N, N)
    # In float32 at least, whatever autocast says: bf16 scalings lose the plan.
    with torch.autocast(x.device.type, enabled=False):
        x = upcast(x)
        P = _sinkhorn_rounds(x, n_iters - 1, tol, check_every, backward)
        if not torch.isfinite(P).all():  # a support the scalings cannot follow: log domain
            _check_log_alpha(x, shape)  # unless the input is the cause
            _note_fallback(shape, x.dtype)
            P = sinkhorn_ref(x.transpose(-1, -2), n_iters).transpose(-1, -2)
            if not torch.isfinite(P).all():
                raise NonFiniteError(
                    "'log_alpha' should keep a finite entry in every row and column (-inf marks a "
                    "forbidden pair) but has a row or column of -inf only"
                )
    P = P.transpose(-1, -2)
    if tol is not None:
        err = float(marginal_error(P.detach()).max())
        if not err < tol:
            warnings.warn(
                f"Sinkhorn stopped after n_iters={n_iters} with marginal error {err:.3g} "
                f"> tol={tol:g}; raise n_iters or tau",
                SinkhornConvergenceWarning,
                stacklevel=2,
            )
    return P.reshape(shape)


def _check_log_alpha(x: torch.Tensor, shape: torch.Size) -> None:
    """Refuse NaN and +inf in ``log_alpha`` (``x``), naming the counts."""
    nan, inf = int(torch.isnan(x).sum()), int(torch.isposinf(x).sum())
    if nan or inf:
        raise NonFiniteError(
            f"'log_alpha' should be finite or -inf but holds {nan} NaN and {inf} +inf "
            f"of {x.numel()} (shape {tuple(shape)})"
        )


def _sinkhorn_rounds(x, rounds: int, tol, check_every: int, backward: str) -> torch.Tensor:
    """``1 + rounds`` row-first rounds on ``x (B, N, N)``: one in the log domain, then scaling."""
    if backward == "implicit":
        return _ImplicitSinkhorn.apply(x, rounds, tol, check_every)
    K = _log_round(x).exp()
    return _UnrolledSinkhorn.apply(K, rounds, tol, check_every) if rounds else K


def sinkhorn_ref(log_alpha: torch.Tensor, n_iters: int = 20) -> torch.Tensor:
    """Reference: ``n_iters`` log-domain rounds (columns, then rows, as ``sinkhorn``) under
    autograd, keeping every iteration."""
    x = log_alpha
    for _ in range(n_iters):
        x = x - x.logsumexp(-2, keepdim=True)
        x = x - x.logsumexp(-1, keepdim=True)
    return x.exp()


def sample_gumbel(
    shape: torch.Size | tuple[int, ...],
    like: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard Gumbel noise with ``like``'s dtype and device."""
    tiny = torch.finfo(like.dtype).tiny
    uniform = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return -torch.log(-torch.log(uniform.clamp_min(tiny)))


@full_precision
def gumbel_sinkhorn(
    log_alpha: torch.Tensor,
    tau: float = 1.0,
    n_iters: int = 20,
    noise: float = 1.0,
    generator: torch.Generator | None = None,
    tol: float | None = None,
    backward: str = "unrolled",
) -> torch.Tensor:
    """``sinkhorn((log_alpha + noise * g) / tau)`` with ``g`` standard Gumbel noise.

    ``tau`` is the paper's temperature tau; ``noise=0`` gives ``sinkhorn(log_alpha / tau)``.
    """
    check_square("log_alpha", log_alpha)
    tau = check_positive("tau", tau)
    noise = check_nonnegative("noise", noise)
    if noise:
        log_alpha = log_alpha + noise * sample_gumbel(log_alpha.shape, log_alpha, generator)
    return sinkhorn(log_alpha / tau, n_iters=n_iters, tol=tol, backward=backward)
