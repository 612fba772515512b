"""Permutation estimators: differentiable sorting and permutation operators for PyTorch.

Conventions: a hard permutation ``index (B, N)`` puts input token ``index[b, i]`` at slot ``i``; a
soft permutation ``P (B, N, N)`` has rows summing to 1 and ``x_out = P @ x``; sorting is
descending (slot 0 gets the highest score); ``tau`` is the temperature (smaller = harder).
"""

from . import saliency as _saliency  # noqa: F401
from . import samplers as _samplers  # noqa: F401  (registers the estimators)
from . import score_estimators as _score_estimators  # noqa: F401
from .base import PermutationEstimator, Wants
from .base import ramp_scores as ramp_scores
from .matrix_free import softsort_apply
from .permutation import PermutationOutput, apply_permutation, hard_permutation
from .plackett_luce import (
    plackett_luce_log_prob,
    plackett_luce_sample,
    plackett_luce_sequential_entropy,
)
from .registry import create_estimator, list_estimators, register_estimator
from .relaxations import neuralsort, ot_sort, soft_rank_permutation, softsort, sort_permutation
from .sinkhorn import SinkhornConvergenceWarning, SinkhornFallbackWarning, gumbel_sinkhorn, sinkhorn
from .sinkhorn import marginal_error as marginal_error
from .sinkhorn import sample_gumbel as sample_gumbel
from .sinkhorn import sinkhorn_ref as sinkhorn_ref

# The public API. References and helpers (``sinkhorn_ref``, ``sample_gumbel``,
# ``marginal_error``, ``ramp_scores``) stay importable from here for existing callers but belong
# to their submodules (``from estimators.sinkhorn import sinkhorn_ref``).
__all__ = [
    "PermutationEstimator",
    "PermutationOutput",
    "SinkhornConvergenceWarning",
    "SinkhornFallbackWarning",
    "Wants",
    "apply_permutation",
    "create_estimator",
    "gumbel_sinkhorn",
    "hard_permutation",
    "list_estimators",
    "neuralsort",
    "ot_sort",
    "plackett_luce_log_prob",
    "plackett_luce_sample",
    "plackett_luce_sequential_entropy",
    "register_estimator",
    "sinkhorn",
    "soft_rank_permutation",
    "softsort",
    "softsort_apply",
    "sort_permutation",
]
