"""SoftSort applied without its ``N x N`` matrix: ``softsort(s, tau) @ x`` in O(N D).

SoftSort's row ``m`` is ``softmax_j(-|t_m - s_j| / tau)`` with ``t`` the scores sorted
descending, so with the tokens taken in the same sorted order, ``xs``,

    (P @ x)_m = sum_k K_mk xs_k / sum_k K_mk,    K_mk = exp(-|t_m - t_k| / tau).

``K v`` splits at ``m`` into a forward and a backward decayed sum,

    F_m = sum_{k <= m} exp(-(t_k - t_m) / tau) v_k,
    B_m = sum_{k >= m} exp(-(t_m - t_k) / tau) v_k,
    K v = (F - v) + v + (B - v),

and each is a linear recurrence ``F_m = exp(-(t_{m-1} - t_m) / tau) F_{m-1} + v_m``. Feeding
``v = [xs, 1]`` gives the numerator and the normaliser (at least 1, the item's own term) in one
pass. Only differences of sorted scores, all ``>= 0``, are exponentiated, so every factor lies in
[0, 1]: the factorisation ``exp(-t_m / tau) exp(t_k / tau)`` overflows in float32 already for
scores in [0, 1] at tau 0.01. The recurrence runs chunked: dense lower-triangular blocks of
``CHUNK`` items, then the same scan over the chunks' last items carries each block's total into
the next, recursively, so the work is a few batched matrix products rather than ``N`` steps.

The backward pass is its own, also O(N D), from the same scans (nothing per step is kept): for a
cotangent ``w`` of ``K v``, ``grad v = K w`` and, since each sorted score is both row ``m``'s
target and column ``m``'s key,

    grad t_m = -(w_m . A(v)_m + v_m . A(w)_m) / tau,
    A(v)_m = sum_k sign(t_m - t_k) K_mk v_k = (B_m - v_m) - (F_m - v_m).

Ties. A tied pair contributes no derivative, as ``|0|' = 0`` makes it in dense
:func:`estimators.softsort` under autograd: the scans count tied neighbours on one side, and a
second pair of scans over runs of equal scores takes them out again (run only when the scores hold
a tie). So all-equal scores have exactly zero score gradient. Within a run of ties, the rows'
gradients go to the tied items in the order of a stable descending sort (item order), where dense
SoftSort follows ``torch.sort``'s unspecified order: the sums over each run agree.

:func:`softsort_apply_ref` is the plain dense ``softsort(s, tau) @ x`` both are tested against.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ._checks import check_finite, check_float_tensor, check_positive, check_same_device
from ._precision import HALF, upcast
from .relaxations import _soft_ranks, softsort

CHUNK = 64  # block length of the chunked scan: 64 x 64 blocks keep the matmuls efficient


def _exp_kernel(tau: float):
    """``exp(-gap / tau)`` for ``gap >= 0``; masked pairs (``gap = inf``) give exactly 0."""
    return lambda gap: torch.exp(-gap / tau)


def _tie_kernel(gap: torch.Tensor) -> torch.Tensor:
    """1 for a tied pair, else 0: the ``tau -> 0`` limit of the exponential kernel."""
    return (gap == 0).to(gap.dtype)


def _forward_sums(t: torch.Tensor, v: torch.Tensor, kernel) -> torch.Tensor:
    """``F_m = sum_{k <= m} kernel(t_k - t_m) v_k`` for descending ``t (R, N)``, ``v (R, N, C)``.

    ``kernel`` must be multiplicative along the sorted order (``kernel(a + b) = kernel(a)
    kernel(b)`` for gaps ``>= 0``), which lets the chunks' last items carry each block forward.
    """
    r, n, c = v.shape
    chunks = -(-n // CHUNK)
    pad = chunks * CHUNK - n
    if pad:  # copies of the last score with zero values: they add nothing before them
        t = torch.cat([t, t[:, -1:].expand(r, pad)], 1)
        v = torch.cat([v, v.new_zeros(r, pad, c)], 1)
    tc = t.view(r, chunks, CHUNK)  # (R, n_c, L)
    gap = tc.unsqueeze(-2) - tc.unsqueeze(-1)  # (R, n_c, L, L): [m, k] = t_k - t_m
    upper = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=t.device).triu(1)
    weights = kernel(gap.masked_fill(upper, math.inf))  # zero above the diagonal (k > m)
    local = weights @ v.view(r, chunks, CHUNK, c)  # (R, n_c, L, C): sums within each block
    if chunks > 1:
        ends = tc[:, :, -1]  # (R, n_c)
        carried = _forward_sums(ends, local[:, :, -1], kernel)  # (R, n_c, C): F at block ends
        into = kernel(ends[:, :-1].unsqueeze(-1) - tc[:, 1:])  # (R, n_c - 1, L)
        local = torch.cat(
            [local[:, :1], local[:, 1:] + into.unsqueeze(-1) * carried[:, :-1, None]], 1
        )
    return local.reshape(r, chunks * CHUNK, c)[:, :n]


def _both_sums(t: torch.Tensor, v: torch.Tensor, kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward and backward decayed sums without the item's own term, ``(F - v, B - v)``,
    each ``(R, N, C)``: ``K v`` is their sum plus ``v``. Taking them one step back along the
    recurrence (``F_m - v_m = kernel(t_{m-1} - t_m) F_{m-1}``) rather than subtracting ``v``
    keeps the neighbours' small share exact when ``tau`` is small. ``B`` is ``F`` of the
    reversed sequence with negated scores, which is again descending."""
    forward = _forward_sums(t, v, kernel)
    backward = _forward_sums(-t.flip(1), v.flip(1), kernel).flip(1)
    step = kernel(t[:, :-1] - t[:, 1:]).unsqueeze(-1)  # (R, N - 1, 1): decay between neighbours
    before = torch.cat([torch.zeros_like(v[:, :1]), step * forward[:, :-1]], 1)
    after = torch.cat([step * backward[:, 1:], torch.zeros_like(v[:, :1])], 1)
    return before, after


def _signed_sums(t, v, before, after, has_ties: bool) -> torch.Tensor:
    """``A(v)_m = sum_k sign(t_m - t_k) K_mk v_k`` from the scans, with ``sign(0) = 0``."""
    if not has_ties:
        return after - before
    tied_before, tied_after = _both_sums(t, v, _tie_kernel)
    # Differences of like sums first: all-tied scores give exactly zero.
    return (after - tied_after) - (before - tied_before)


def _sorted_values(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``[x, 1]`` in the sorted order: ``(R, N, D + 1)``, the numerator's and the normaliser's
    values."""
    xs = x.gather(1, order.unsqueeze(-1).expand_as(x))  # (R, N, D)
    return torch.cat([xs, xs.new_ones(xs.shape[:-1] + (1,))], -1)


class _SoftSortApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, x, tau):
        # scores (R, N), x (R, N, D), both in the compute dtype
        t, order = scores.sort(dim=-1, descending=True, stable=True)  # (R, N)
        v = _sorted_values(x, order)  # (R, N, D + 1)
        before, after = _both_sums(t, v, _exp_kernel(tau))
        total = before + v + after  # (R, N, D + 1): K v
        ctx.tau = tau
        # x rather than v and y: the backward re-gathers v and recomputes y, the same arithmetic
        ctx.save_for_backward(t, order, x, before, after)
        return total[..., :-1] / total[..., -1:]  # (R, N, D); the normaliser is >= 1

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        t, order, x, before, after = ctx.saved_tensors
        tau = ctx.tau
        want_scores, want_x = ctx.needs_input_grad[:2]
        with torch.autocast(grad_y.device.type, enabled=False):  # the scans stay in float32+
            grad_y = grad_y.to(x.dtype)
            v = _sorted_values(x, order)
            total = before + v + after
            norm = total[..., -1:]  # (R, N, 1)
            y = total[..., :-1] / norm
            # The cotangent of K v: y = num / norm.
            grad_norm = -(grad_y * y).sum(-1, keepdim=True) / norm  # (R, N, 1)
            w = torch.cat([grad_y / norm, grad_norm], -1)  # (R, N, D + 1)
            w_before, w_after = _both_sums(t, w, _exp_kernel(tau))
            grad_scores = grad_x = None
            if want_x:
                grad_xs = (w_before + w + w_after)[..., :-1]  # (R, N, D): K w, K symmetric
                index = order.unsqueeze(-1).expand_as(grad_xs)
                grad_x = torch.zeros_like(grad_xs).scatter_(1, index, grad_xs)
            if want_scores:
                has_ties = bool((t[:, 1:] == t[:, :-1]).any())  # one sync: the tie scans are rare
                signed_v = _signed_sums(t, v, before, after, has_ties)
                signed_w = _signed_sums(t, w, w_before, w_after, has_ties)
                grad_t = -((w * signed_v).sum(-1) + (v * signed_w).sum(-1)) / tau  # (R, N)
                grad_scores = torch.zeros_like(grad_t).scatter_(1, order, grad_t)
        return grad_scores, grad_x, None


def _check_apply_args(scores, x, tau) -> float:
    check_float_tensor("scores", scores)
    check_float_tensor("x", x, min_dim=2)
    check_same_device(scores=scores, x=x)
    if scores.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"'x' should be (..., N, D) with N = {scores.shape[-1]} items, as 'scores' "
            f"(..., N), but got 'x' of shape {tuple(x.shape)} and 'scores' of shape "
            f"{tuple(scores.shape)}"
        )
    try:
        torch.broadcast_shapes(scores.shape[:-1], x.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading dimensions of 'scores' {tuple(scores.shape[:-1])} and 'x' "
            f"{tuple(x.shape[:-2])} should broadcast"
        ) from None
    return check_positive("tau", tau)


def softsort_apply(scores: torch.Tensor, x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``softsort(scores, tau) @ x`` without forming the matrix: O(N D) time and memory.

    Args:
        scores: ``(..., N)``, one score per item; slot 0 gets the highest (descending).
        x: ``(..., N, D)``, the items; leading dimensions broadcast against ``scores``'s, so one
            score vector ``(N,)`` orders a whole batch ``(B, N, D)`` (its scan then runs once,
            over ``B * D`` channels).
        tau: SoftSort's temperature (the paper's tau, arXiv 2006.16038).

    Returns ``(..., N, D)`` in ``x``'s dtype. Half-precision input (autocast) is computed in
    float32; float64 stays float64. Ties: see the module. Non-finite scores are refused (one
    reduction and one host sync); the estimators call the unchecked ``_softsort_apply``.
    """
    tau = _check_apply_args(scores, x, tau)
    return _softsort_apply(check_finite("scores", scores), x, tau)


def _softsort_apply(scores: torch.Tensor, x: torch.Tensor, tau: float) -> torch.Tensor:
    out_dtype = x.dtype
    dtype = torch.promote_types(_compute_dtype(scores), _compute_dtype(x))
    n, d = x.shape[-2:]
    batch = torch.broadcast_shapes(scores.shape[:-1], x.shape[:-2])
    with torch.autocast(x.device.type, enabled=False):
        scores, x = scores.to(dtype), x.to(dtype)
        if scores.numel() == n:  # one order for every row: fold the rows into channels
            rows = x.expand(batch + (n, d)).reshape(-1, n, d)  # (R, N, D)
            folded = rows.permute(1, 0, 2).reshape(1, n, -1)  # (1, N, R * D)
            y = _SoftSortApply.apply(scores.reshape(1, n), folded, tau)
            y = y.reshape(n, -1, d).permute(1, 0, 2)  # (R, N, D)
        else:
            flat_scores = scores.expand(batch + (n,)).reshape(-1, n)  # (R, N)
            y = _SoftSortApply.apply(flat_scores, x.expand(batch + (n, d)).reshape(-1, n, d), tau)
    return y.reshape(batch + (n, d)).to(out_dtype)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in HALF else x.dtype


def softsort_apply_ref(scores: torch.Tensor, x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Reference: the dense ``softsort(scores, tau) @ x`` under autograd (``N x N`` memory)."""
    tau = _check_apply_args(scores, x, tau)
    P = softsort(scores, tau)  # (..., N, N)
    dtype = torch.promote_types(P.dtype, _compute_dtype(x))
    return (P.to(dtype) @ x.to(dtype)).to(x.dtype)


def softsort_column_sums(scores: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The column sums ``softsort(scores, tau).sum(-2)``, ``(..., N)`` in item order, without the
    matrix (no gradient): how far a SoftSort plan is from doubly stochastic (its rows sum to 1
    exactly)."""
    check_float_tensor("scores", scores)
    tau = check_positive("tau", tau)
    n = scores.shape[-1]
    with torch.no_grad(), torch.autocast(scores.device.type, enabled=False):
        s = scores.to(_compute_dtype(scores)).reshape(-1, n)  # (R, N)
        t, order = s.sort(dim=-1, descending=True, stable=True)
        kernel = _exp_kernel(tau)
        ones = s.new_ones(s.shape + (1,))
        before, after = _both_sums(t, ones, kernel)
        inv_norm = 1.0 / (before + ones + after)  # (R, N, 1): 1 / row normaliser
        before, after = _both_sums(t, inv_norm, kernel)
        cols = (before + inv_norm + after).squeeze(-1)  # (R, N), sorted order
        out = torch.zeros_like(cols).scatter_(1, order, cols)
    return out.reshape(scores.shape)


def kernel_apply(
    queries: torch.Tensor, keys: torch.Tensor, x: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """``softmax_j(-|queries_i - keys_j| / tau) @ x`` without the ``M x N`` matrix: the two-set
    form of the same scans, for any L1 kernel between queries and keys (a soft permutation from
    soft ranks, one Sinkhorn row update of OT sorting with p = 1).

    Args:
        queries: ``(..., M)``; keys: ``(..., N)``; x: ``(..., N, D)``, one row per key; leading
            dimensions broadcast.
        tau: the kernel's temperature.

    Returns ``(..., M, D)`` in ``x``'s dtype, computed in float32 at least. The keys' forward and
    backward sums are scanned once; each query then takes them at its nearest key above and
    below, scaled by ``exp(-gap / tau)`` relative to the nearer of the two, so a query far from
    every key (where each weight underflows) still gets the softmax of the nearest ones. The
    gradient comes from autograd through the chunked scans: ``O(N * CHUNK)`` memory, no ``M x N``.
    """
    check_float_tensor("queries", queries)
    check_float_tensor("keys", keys)
    check_float_tensor("x", x, min_dim=2)
    check_same_device(queries=queries, keys=keys, x=x)
    if keys.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"'x' should be (..., N, D) with N = {keys.shape[-1]} rows, one per key, but got "
            f"'x' of shape {tuple(x.shape)} and 'keys' of shape {tuple(keys.shape)}"
        )
    tau = check_positive("tau", tau)
    m, (n, d) = queries.shape[-1], x.shape[-2:]
    try:
        batch = torch.broadcast_shapes(queries.shape[:-1], keys.shape[:-1], x.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading dimensions of 'queries' {tuple(queries.shape[:-1])}, 'keys' "
            f"{tuple(keys.shape[:-1])} and 'x' {tuple(x.shape[:-2])} should broadcast"
        ) from None
    dtype = torch.promote_types(_compute_dtype(keys), _compute_dtype(x))
    dtype = torch.promote_types(dtype, _compute_dtype(queries))
    with torch.autocast(x.device.type, enabled=False):
        a = queries.to(dtype).expand(batch + (m,)).reshape(-1, m)  # (R, M)
        b = keys.to(dtype).expand(batch + (n,)).reshape(-1, n)  # (R, N)
        v = x.to(dtype).expand(batch + (n, d)).reshape(-1, n, d)  # (R, N, D)
        y = _two_set_apply(a, b, v, tau)
    return y.reshape(batch + (m, d)).to(x.dtype)


def _two_set_apply(a, b, x, tau: float) -> torch.Tensor:
    t, order = b.sort(dim=-1, descending=True, stable=True)  # (R, N)
    v = _sorted_values(x, order)  # (R, N, D + 1)
    kernel = _exp_kernel(tau)
    down = _forward_sums(t, v, kernel)  # (R, N, D + 1): the keys above each key, and itself
    up = _forward_sums(-t.flip(1), v.flip(1), kernel).flip(1)  # below, and itself
    ascending, queries = -t.detach().contiguous(), -a.detach().contiguous()
    above = torch.searchsorted(ascending, queries, right=True)  # (R, M): keys >= each query
    strictly = torch.searchsorted(ascending, queries, right=False)  # keys > each query
    total = _from_neighbours(t, a, down, up, above, tau)
    if not torch.equal(above, strictly):  # a query equal to a key (one sync)
        # Counted above, a tied key gives the query a one-sided derivative; counted below, the
        # other side. Their mean is dense autograd's |0|' = 0; the value is the same either way.
        total = 0.5 * (total + _from_neighbours(t, a, down, up, strictly, tau))
    return total[..., :-1] / total[..., -1:]


def _from_neighbours(t, a, down, up, above, tau: float) -> torch.Tensor:
    """``K v`` at each query from the sums at its nearest key above (index ``above - 1``) and
    below (``above``), each scaled by ``exp(-gap / tau)`` relative to the nearer one."""
    n = t.shape[1]
    i_above, i_below = (above - 1).clamp(0, n - 1), above.clamp(max=n - 1)  # (R, M)
    gap_above = torch.where(above > 0, t.gather(1, i_above) - a, math.inf)  # (R, M), >= 0
    gap_below = torch.where(above < n, a - t.gather(1, i_below), math.inf)
    nearest = torch.minimum(gap_above, gap_below)
    w_above = torch.exp(-(gap_above - nearest) / tau).unsqueeze(-1)  # 1 for the nearer side
    w_below = torch.exp(-(gap_below - nearest) / tau).unsqueeze(-1)
    pick = lambda sums, i: sums.gather(1, i.unsqueeze(-1).expand(-1, -1, sums.shape[-1]))  # noqa: E731
    return w_above * pick(down, i_above) + w_below * pick(up, i_below)  # (R, M, D + 1)


def kernel_apply_ref(queries, keys, x, tau: float = 1.0) -> torch.Tensor:
    """Reference: the dense ``softmax(-|queries_i - keys_j| / tau) @ x`` (``M x N`` memory)."""
    P = torch.softmax(-(queries.unsqueeze(-1) - keys.unsqueeze(-2)).abs() / tau, dim=-1)
    return P @ x


def soft_rank_apply(
    scores: torch.Tensor, x: torch.Tensor, tau: float = 1.0, regularization: str = "l2"
) -> torch.Tensor:
    """``soft_rank_permutation(scores, tau, regularization, kernel="l1") @ x`` without the
    ``N x N`` matrix: torchsort's soft ranks (O(N log N)), then :func:`kernel_apply` between the
    slots and the ranks. ``scores (..., N)``, ``x (..., N, D)`` -> ``(..., N, D)``."""
    check_float_tensor("scores", scores)
    tau = check_positive("tau", tau)
    with torch.autocast(scores.device.type, enabled=False):
        ranks, slots = _soft_ranks(upcast(scores), tau, regularization, "l1")
    return kernel_apply(slots, ranks, x, tau)
