"""Estimators with one learned score per token, relaxed to a soft permutation by a
differentiable sort: SoftSort, NeuralSort, torchsort's soft ranks, optimal-transport sorting.

Their training steps call the relaxations unchecked, so that no step waits on the device for a
check: a non-finite score reaches ``P``, the tokens and so the loss, which a training loop checks
(OT sorting's Sinkhorn refuses it outright, at no extra cost). Eval refuses it
(:meth:`~estimators.PermutationEstimator.check_finite_parameters`)."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_choice, check_count
from .base import (
    MATERIALIZE_LIMIT,
    PermutationEstimator,
    _sinkhorn_aux,
    _soft_aux,
    _with_fallbacks,
    ramp_scores,
)
from .matrix_free import _softsort_apply, soft_rank_apply, softsort_column_sums
from .permutation import PermutationOutput, _permute_tokens, apply_permutation
from .registry import register_estimator
from .relaxations import (
    KERNELS,
    REGULARIZATIONS,
    _neuralsort,
    _ot_sort,
    _soft_rank_permutation,
    _softsort,
    import_torchsort,
    ot_sort,
    sort_permutation,
)
from .sinkhorn import BACKWARDS, mean_marginal_error


class _ScoreSortEstimator(PermutationEstimator):
    """One learned score per token, relaxed to a soft permutation by ``self.relax`` (or, above
    ``materialize_limit``, applied to the tokens by ``self.relax_apply``)."""

    soft_path = "matrix"

    def __init__(
        self, num_tokens: int, *, tau=1.0, init_order=None, hard=False,
        materialize_limit=MATERIALIZE_LIMIT,
    ) -> None:  # fmt: skip
        super().__init__(
            num_tokens, tau=tau, init_order=init_order, materialize_limit=materialize_limit
        )
        self.hard = bool(hard)
        self.scores = nn.Parameter(ramp_scores(self.init_order))

    def relax(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def relax_apply(self, scores: torch.Tensor, tokens: torch.Tensor):
        """``(relax(scores) @ tokens, aux)`` without forming the matrix (``soft_path="apply"``)."""
        raise NotImplementedError

    def order(self) -> torch.Tensor:
        return sort_permutation(self.scores.detach())

    def train_forward(self, tokens: torch.Tensor) -> PermutationOutput:
        b = tokens.shape[0]
        index = self.order().to(tokens.device).expand(b, -1)  # (B, N)
        if self.applies():
            out, aux = self.relax_apply(self.scores, tokens)
            if self.hard:  # straight-through on the tokens: (H - P.detach() + P) @ x
                out = _permute_tokens(tokens, index) - out.detach() + out
            return PermutationOutput(out, index, aux=aux)
        P, fallbacks = _with_fallbacks(self.relax, self.scores)
        P = P.unsqueeze(0)  # (1, N, N) in float32, shared by the batch
        aux = _soft_aux(P)
        if self.doubly_stochastic:  # Sinkhorn inside
            aux.update(_sinkhorn_aux(P, fallbacks))
        out = apply_permutation(tokens, soft=P)
        return PermutationOutput(out, index, soft=P.expand(b, -1, -1), aux=aux)


@register_estimator("softsort")
class SoftSortEstimator(_ScoreSortEstimator):
    """One learned score per token, relaxed by :func:`estimators.softsort`; above
    ``materialize_limit`` tokens applied by :func:`estimators.softsort_apply` (O(N D)), with
    ``aux["marginal_error"]`` from the column sums the same way and no ``row_entropy``."""

    soft_path = "apply"

    def relax(self, scores):
        return _softsort(scores, self.tau, self.hard)

    def relax_apply(self, scores, tokens):
        out = _softsort_apply(scores, tokens, self.tau)  # (B, N, D): one order, scanned once
        cols = softsort_column_sums(scores.detach(), self.tau)  # rows sum to 1 exactly
        return out, {"marginal_error": (cols - 1).abs().max()}


@register_estimator("neuralsort")
class NeuralSortEstimator(_ScoreSortEstimator):
    """One learned score per token, relaxed by :func:`estimators.neuralsort`."""

    def relax(self, scores):
        return _neuralsort(scores, self.tau, self.hard)


@register_estimator("torchsort")
class TorchSortEstimator(_ScoreSortEstimator):
    """One learned score per token, relaxed by :func:`estimators.soft_rank_permutation`
    (torchsort's soft ranks; needs torchsort installed). ``kernel="l1"`` has an apply path
    (:func:`estimators.matrix_free.soft_rank_apply`): above ``materialize_limit`` tokens it orders
    them without the matrix, with no ``aux`` diagnostics; ``"squared"`` (the default) only forms
    P."""

    soft_path = None  # decided by the kernel

    def __init__(
        self, num_tokens, *, tau=1.0, init_order=None, hard=False, regularization="l2",
        kernel="squared", materialize_limit=MATERIALIZE_LIMIT,
    ):  # fmt: skip
        import_torchsort()  # fail when built, not at the first training step
        check_choice("regularization", regularization, REGULARIZATIONS)
        check_choice("kernel", kernel, KERNELS)
        super().__init__(
            num_tokens, tau=tau, init_order=init_order, hard=hard,
            materialize_limit=materialize_limit,
        )  # fmt: skip
        self.regularization, self.kernel = regularization, kernel
        self.soft_path = "apply" if kernel == "l1" else "matrix"
        self.check_materialize_limit()

    def relax(self, scores):
        return _soft_rank_permutation(
            scores, self.tau, self.regularization, hard=self.hard, kernel=self.kernel
        )

    def relax_apply(self, scores, tokens):
        return soft_rank_apply(scores, tokens, self.tau, self.regularization), {}


@register_estimator("ot_sort")
class OTSortEstimator(_ScoreSortEstimator):
    """One learned score per token, relaxed by :func:`estimators.ot_sort` (entropic optimal
    transport, ``n_iters`` Sinkhorn rounds)."""

    doubly_stochastic = True

    def __init__(
        self, num_tokens, *, tau=0.01, init_order=None, hard=False, n_iters=50,
        backward="unrolled", materialize_limit=MATERIALIZE_LIMIT,
    ):  # fmt: skip
        super().__init__(
            num_tokens, tau=tau, init_order=init_order, hard=hard,
            materialize_limit=materialize_limit,
        )  # fmt: skip
        self.n_iters = check_count("n_iters", n_iters)
        self.backward_mode = check_choice("backward", backward, BACKWARDS)

    def relax(self, scores):
        return _ot_sort(scores, self.tau, self.n_iters, backward=self.backward_mode, hard=self.hard)

    def marginal_error(self) -> float:
        """The mean marginal error of the soft ``ot_sort(scores)`` (never straight-through) at
        the current ``tau`` and ``n_iters``."""
        with torch.no_grad():
            P = ot_sort(self.scores.detach().float(), self.tau, self.n_iters)  # (N, N)
        return float(mean_marginal_error(P))
