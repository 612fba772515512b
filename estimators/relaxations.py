"""Soft permutation matrices from a score vector: SoftSort, NeuralSort, optimal-transport sorting
and torchsort's soft ranks.

Every function maps scores ``(..., N)`` to ``P (..., N, N)`` whose rows sum to 1, with
``P[i, j]`` the weight of item ``j`` at slot ``i`` and slot 0 for the highest score (descending).
As ``tau -> 0`` each tends to ``one_hot(argsort(scores, descending=True))``; ``hard=True``
returns that matrix in the forward pass and the soft one's gradient (straight-through).
Half-precision scores (autocast) are computed in float32 (see ``_precision``).

Scores holding NaN or inf are refused (:class:`~estimators._checks.NonFiniteError`, a ValueError
naming ``scores``) at one reduction and one host sync per call. The estimators call the unchecked
``_softsort``, ``_neuralsort``, ``_ot_sort`` and ``_soft_rank_permutation`` in their training
steps, where a non-finite score reaches ``P``, the tokens and the loss instead; :func:`ot_sort`
costs nothing more, since its Sinkhorn iterations sync already.
"""

from __future__ import annotations

import torch

from ._checks import NonFiniteError, check_choice, check_finite, check_float_tensor, check_positive
from ._precision import full_precision
from .sinkhorn import sinkhorn

REGULARIZATIONS = ("l2", "kl")
KERNELS = ("squared", "l1")
TORCHSORT_INSTALL = (
    "torchsort is not installed; it is source-only and builds against the installed torch: "
    "install torch first, then `pip install --no-build-isolation torchsort` (on a machine with "
    "nvcc but no GPU, take nvcc off PATH for a CPU-only build)"
)


def import_torchsort():
    """The ``torchsort`` module, or an ImportError that says how to install it."""
    try:
        import torchsort
    except ImportError as err:
        raise ImportError(TORCHSORT_INSTALL) from err
    return torchsort


def sort_permutation(scores: torch.Tensor) -> torch.Tensor:
    """The hard descending sort as an index ``(..., N)``; ties keep their input order."""
    return scores.argsort(dim=-1, descending=True, stable=True)


def _straight_through(P: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    hard = torch.nn.functional.one_hot(sort_permutation(scores.detach()), scores.shape[-1])
    return hard.to(P.dtype) - P.detach() + P


def _pairwise_abs(scores: torch.Tensor) -> torch.Tensor:
    return (scores.unsqueeze(-1) - scores.unsqueeze(-2)).abs()  # (..., N, N)


@full_precision
def softsort(scores: torch.Tensor, tau: float = 1.0, hard: bool = False) -> torch.Tensor:
    """SoftSort (Prillo & Eisenschlos 2020, arXiv 2006.16038): ``P[i, j] = softmax_j(-|sort(s)_i
    - s_j| / tau)``; ``tau`` is the paper's tau."""
    check_float_tensor("scores", scores)
    tau = check_positive("tau", tau)
    return _softsort(check_finite("scores", scores), tau, hard)


@full_precision
def _softsort(scores: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """:func:`softsort` unchecked."""
    s_sorted = scores.sort(dim=-1, descending=True).values  # (..., N)
    P = torch.softmax(-(s_sorted.unsqueeze(-1) - scores.unsqueeze(-2)).abs() / tau, dim=-1)
    return _straight_through(P, scores) if hard else P


@full_precision
def neuralsort(scores: torch.Tensor, tau: float = 1.0, hard: bool = False) -> torch.Tensor:
    """NeuralSort (Grover et al. 2019, arXiv 1903.08850), the O(N^2) form:
    ``P[i, :] = softmax(((N + 1 - 2i) s - A_s 1) / tau)`` with 1-based ``i`` and
    ``A_s[j, k] = |s_j - s_k|``; ``tau`` is the paper's tau."""
    check_float_tensor("scores", scores)
    tau = check_positive("tau", tau)
    return _neuralsort(check_finite("scores", scores), tau, hard)


@full_precision
def _neuralsort(scores: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """:func:`neuralsort` unchecked."""
    n = scores.shape[-1]
    spread = _pairwise_abs(scores).sum(-1)  # (..., N): A_s 1
    coef = n - 1 - 2 * torch.arange(n, dtype=scores.dtype, device=scores.device)  # (N,)
    logits = coef.unsqueeze(-1) * scores.unsqueeze(-2) - spread.unsqueeze(-2)  # (..., N, N)
    P = torch.softmax(logits / tau, dim=-1)
    return _straight_through(P, scores) if hard else P


@full_precision
def ot_sort(
    scores: torch.Tensor,
    tau: float = 0.01,
    n_iters: int = 50,
    tol: float | None = None,
    backward: str = "unrolled",
    hard: bool = False,
) -> torch.Tensor:
    """Sorting by entropic optimal transport (Cuturi, Teboul & Vert 2019, arXiv 1905.11885).

    The scores, standardized and squashed by a sigmoid into [0, 1], are transported with uniform
    weights onto ``N`` anchors ``1 = b_0 > ... > b_{N-1} = 0`` under the cost
    ``C[i, j] = (b_i - g(s_j))^2``; ``tau`` is the entropic regularization epsilon. The plan times
    ``N`` is doubly stochastic; it is solved with :func:`estimators.sinkhorn` (tested against POT).
    Non-finite scores are refused when the iterations meet them (no extra sync).
    """
    check_float_tensor("scores", scores)
    return _ot_sort(scores, check_positive("tau", tau), n_iters, tol, backward, hard)


@full_precision
def _ot_sort(scores, tau: float, n_iters=50, tol=None, backward="unrolled", hard=False):
    """:func:`ot_sort` without its checks of ``scores`` and ``tau``; non-finite scores still
    raise, named, where Sinkhorn finds its plan non-finite."""
    n = scores.shape[-1]
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, keepdim=True, unbiased=False) if n > 1 else torch.ones_like(mean)
    squashed = torch.sigmoid((scores - mean) / (std + 1e-6))  # (..., N) in (0, 1)
    anchors = torch.linspace(1.0, 0.0, n, dtype=scores.dtype, device=scores.device)  # (N,)
    cost = (anchors.unsqueeze(-1) - squashed.unsqueeze(-2)) ** 2  # (..., N, N)
    try:
        P = sinkhorn(-cost / tau, n_iters=n_iters, tol=tol, backward=backward)
    except NonFiniteError:
        check_finite("scores", scores)  # name the cause when it is the scores
        raise
    return _straight_through(P, scores) if hard else P


@full_precision
def soft_rank_permutation(
    scores: torch.Tensor,
    tau: float = 1.0,
    regularization: str = "l2",
    hard: bool = False,
    kernel: str = "squared",
) -> torch.Tensor:
    """A soft permutation from torchsort's soft ranks (Blondel et al. 2020, arXiv 2002.08871).

    ``r = torchsort.soft_rank(-s, regularization, regularization_strength=tau)`` gives each item a
    soft rank in [1, N] (1 = highest score); ``P[i, j] = softmax_j(-(r_j - (i + 1))^2 / tau)``
    (``kernel="squared"``) or ``softmax_j(-|r_j - (i + 1)| / tau)`` (``kernel="l1"``, which
    :func:`estimators.matrix_free.soft_rank_apply` applies without the matrix) puts at slot ``i``
    the items whose rank is near ``i + 1``. ``regularization="l2"`` is the default because ``"kl"``
    gives NaN gradients at small strength (torchsort issue 63).
    """
    check_float_tensor("scores", scores)
    tau = check_positive("tau", tau)
    return _soft_rank_permutation(check_finite("scores", scores), tau, regularization, hard, kernel)


@full_precision
def _soft_rank_permutation(scores, tau: float, regularization="l2", hard=False, kernel="squared"):
    """:func:`soft_rank_permutation` unchecked."""
    ranks, slots = _soft_ranks(scores, tau, regularization, kernel)
    gap = ranks.unsqueeze(-2) - slots.unsqueeze(-1)  # (..., N, N): rank j minus slot i
    logits = -(gap.abs() if kernel == "l1" else gap**2) / tau
    P = torch.softmax(logits, dim=-1)
    return _straight_through(P, scores) if hard else P


def _soft_ranks(scores: torch.Tensor, tau: float, regularization: str, kernel: str):
    """torchsort's soft ranks ``(..., N)`` of ``-scores`` and the slots ``1 .. N``."""
    torchsort = import_torchsort()
    check_choice("regularization", regularization, REGULARIZATIONS)
    check_choice("kernel", kernel, KERNELS)
    n = scores.shape[-1]
    flat = scores.reshape(-1, n)  # torchsort takes 2-d input only
    ranks = torchsort.soft_rank(-flat, regularization=regularization, regularization_strength=tau)
    slots = torch.arange(1, n + 1, dtype=scores.dtype, device=scores.device)  # (N,)
    return ranks.reshape(scores.shape), slots
