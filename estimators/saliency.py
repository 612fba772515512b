"""``saliency``: an order per image, from scores a small head gives each patch.

REOrder learns one order per dataset and leaves per-image orders to future work. Here a head scores
every patch from early features ``(B, N, F)`` - by default the output of the first
``feature_blocks`` backbone blocks on the canonical order, which the estimator asks for through
``wants = Wants("blocks", blocks=feature_blocks)`` and the training loop computes with the
backbone's own weights - or from the tokens themselves (``feature_blocks=0``, nothing wanted):
``s_i = head(f_i) + b_i``, where ``b`` is a learned per-position bias that starts as the ramp of
``init_order`` (and the head's output near zero), so eval returns ``init_order`` until training
moves it. Sorting is descending (slot 0 gets the highest score).

Training goes through a differentiable relaxation of the per-image sort (``softsort``,
``neuralsort``, ``torchsort``, ``ot_sort``) or through Plackett-Luce REINFORCE over the per-image
scores (``plackett_luce``); eval applies the hard per-image argsort. With ``softsort``, above
``materialize_limit`` tokens each image's soft permutation is applied by
:func:`estimators.softsort_apply` without forming it; the matrix relaxations refuse that many.
After a training loop's policy phase the head is frozen, but its features still come from
backbone blocks that keep training, so per-image orders can still move then.

Training calls the relaxations unchecked (no step waits on the device for a check: non-finite
scores reach the tokens and the loss); eval refuses non-finite parameters, not per-image scores,
so that every process of a data-parallel run refuses together or none does.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_choice, check_count
from .base import (
    MATERIALIZE_LIMIT,
    PermutationEstimator,
    Wants,
    _Reinforce,
    draw_share,
    ramp_scores,
)
from .matrix_free import _softsort_apply
from .permutation import PermutationOutput, _permute_tokens, apply_permutation
from .plackett_luce import _log_prob, _sample
from .registry import register_estimator
from .relaxations import (
    _neuralsort,
    _ot_sort,
    _soft_rank_permutation,
    _softsort,
    ot_sort,
    sort_permutation,
)
from .sinkhorn import mean_marginal_error

RELAXATIONS = {  # unchecked: see the module
    "softsort": _softsort,
    "neuralsort": _neuralsort,
    "torchsort": _soft_rank_permutation,
    "ot_sort": _ot_sort,
    "plackett_luce": None,  # sampled, with the REINFORCE term
}
SOFT_PATHS = {"softsort": "apply", "plackett_luce": "none"}  # the others form P: "matrix"


@register_estimator("saliency")
class SaliencyEstimator(_Reinforce, PermutationEstimator):
    """An order per image: a head on each patch's features (width ``dim``) plus a learned
    per-position bias, sorted descending; trained through ``relaxation`` (see the module)."""

    is_global = False
    extra_required = {"dim": "token width"}
    soft_path = None  # decided by the relaxation

    def __init__(
        self, num_tokens, *, dim, tau=1.0, init_order=None, relaxation="softsort", hidden=64,
        feature_blocks=1, hard=False, momentum=0.99, materialize_limit=MATERIALIZE_LIMIT,
    ) -> None:  # fmt: skip
        check_choice("relaxation", relaxation, RELAXATIONS)
        super().__init__(
            num_tokens, tau=tau, init_order=init_order, materialize_limit=materialize_limit
        )
        self.soft_path = SOFT_PATHS.get(relaxation, "matrix")
        self.check_materialize_limit()
        self.dim = check_count("dim", dim)
        self.relaxation, self.hard = relaxation, bool(hard)
        blocks = check_count("feature_blocks", feature_blocks, minimum=0)
        self.wants = Wants("blocks", blocks=blocks) if blocks else Wants()
        self.init_reinforce(momentum)
        hidden = check_count("hidden", hidden)
        self.head = nn.Sequential(
            nn.LayerNorm(self.dim), nn.Linear(self.dim, hidden), nn.GELU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        # Near-zero output at first, far below the ramp's spacing: eval starts at init_order.
        nn.init.normal_(self.head[-1].weight, std=1e-5)
        nn.init.zeros_(self.head[-1].bias)
        self.position_bias = nn.Parameter(ramp_scores(self.init_order))

    def scores(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image scores ``(B, N)`` from ``features`` (or the tokens)."""
        source = tokens if features is None else features
        if (
            source.dim() != 3
            or source.shape[:2] != tokens.shape[:2]
            or source.shape[-1] != self.dim
        ):
            raise ValueError(
                f"'features' should be (B, N, {self.dim}) = ({tokens.shape[0]}, "
                f"{tokens.shape[1]}, {self.dim}) but got {tuple(source.shape)}"
            )
        # Scores in the parameters' precision whatever autocast says: an order is decided by
        # score differences far below bf16's resolution.
        with torch.autocast(source.device.type, enabled=False):
            scores = self.head(source.to(self.position_bias.dtype)).squeeze(-1)  # (B, N)
            return scores + self.position_bias

    def order(self) -> torch.Tensor:
        """The order before any image is seen (the position bias alone); each image's own order
        comes from ``forward``."""
        return sort_permutation(self.position_bias.detach())

    def marginal_error(self) -> float | None:
        """With ``relaxation="ot_sort"`` (Sinkhorn inside): the mean marginal error of the soft
        ``ot_sort`` of the position bias alone (the scores before any image is seen, as
        :meth:`order`) at the current ``tau``; training's per-image error is in ``aux``. None
        for the other relaxations."""
        if self.relaxation != "ot_sort":
            return None
        with torch.no_grad():
            P = ot_sort(self.position_bias.detach().float(), tau=self.tau)  # (N, N)
        return float(mean_marginal_error(P))

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor | None = None
    ) -> PermutationOutput:
        self.check_tokens(tokens)
        s = self.scores(tokens, features)  # (B, N)
        if not self.training:
            self.check_finite_parameters()
            index = sort_permutation(s.detach())  # (B, N): each image its own order
            return self.indexed_output(tokens, index)
        if self.relaxation == "plackett_luce":
            index = draw_share(lambda: _sample(s, 1, self.tau)[0], self.batch_share)  # (B, N)
            log_prob = _log_prob(s, index, self.tau)  # (B,), at the sampling tau
            aux = {"log_prob": log_prob.detach().mean(), "baseline": self.baseline.clone()}
            return self.indexed_output(tokens, index, log_prob=log_prob, aux=aux)
        index = sort_permutation(s.detach())
        aux = {"score_std": s.detach().std(-1, correction=0).mean()}
        if self.applies():  # each image's SoftSort applied without its matrix
            out = _softsort_apply(s, tokens, self.tau)  # (B, N, D)
            if self.hard:
                out = _permute_tokens(tokens, index) - out.detach() + out
            return PermutationOutput(out, index, aux=aux)
        P = RELAXATIONS[self.relaxation](s, self.tau, hard=self.hard)  # (B, N, N)
        if self.relaxation == "ot_sort":
            aux["mean_marginal_error"] = mean_marginal_error(P.detach()).mean()
        return PermutationOutput(apply_permutation(tokens, soft=P), index, soft=P, aux=aux)

    def surrogate_loss(self, out: PermutationOutput, per_sample_loss: torch.Tensor):
        if out.log_prob is None:
            return per_sample_loss.new_zeros(())
        groups = torch.arange(out.log_prob.shape[0], device=out.log_prob.device)  # one per image
        return self.reinforce(out.log_prob, per_sample_loss, groups)
