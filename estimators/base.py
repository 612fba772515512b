"""The estimators' base: each holds parameters and hyper-parameters and calls the pure functions.

All share one contract (see :class:`PermutationEstimator`), so a training loop runs any of them
without knowing which: ``out = est(tokens)``, ``loss = task_loss + est.surrogate_loss(out, per
sample task loss)``, and ``est.tau`` may be set every step. The estimators themselves: learned
scores relaxed by a differentiable sort in :mod:`.score_estimators`, sampled orders
(Gumbel-Sinkhorn, Plackett-Luce) in :mod:`.samplers`, orders per image from early-layer features
in :mod:`.saliency`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from ._checks import (
    check_choice,
    check_count,
    check_finite,
    check_float_tensor,
    check_nonnegative,
    check_permutation_index,
    check_positive,
    check_real,
)
from .permutation import PermutationOutput, _permute_tokens
from .sinkhorn import fallback_count, marginal_error, mean_marginal_error

T = TypeVar("T")
SAMPLES = ("batch", "image")
# Above this many tokens, estimators that can apply P without forming it do.
MATERIALIZE_LIMIT = 4096


BASELINES = ("ema", "rloo")


class _Reinforce:
    """The score-function term for estimators that sample orders, with one of two baselines.

    ``ema``: an exponential moving average of the mean reward (``momentum``; REOrder's).
    ``rloo``: leave-one-out over the ``K`` permutations drawn in the same step (Kool et al. 2019,
    "Buy 4 REINFORCE samples, get a baseline for free"): each permutation's reward is compared with
    the mean reward of the other ``K - 1``. That tracks the current policy and cancels whatever
    moves all of a step's rewards together (the model improving, a hard batch), and it keeps the
    estimator unbiased, since the other samples are independent of it; per-image differences
    between the groups remain. A step with one sample (a batch of one) contributes no term.
    """

    def init_reinforce(
        self, momentum: float, entropy_weight: float = 0.0, baseline: str = "ema"
    ) -> None:
        momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        entropy_weight = check_nonnegative("entropy_weight", entropy_weight)
        check_choice("baseline", baseline, BASELINES)
        self.momentum, self.entropy_weight = momentum, entropy_weight
        self.baseline_kind = baseline
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))

    def reinforce(
        self, log_prob: torch.Tensor, per_sample_loss: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        """``-(reward - baseline) * log_prob``, averaged so that each permutation counts once;
        ``groups (B,)`` says which of the step's permutations each sample used."""
        if per_sample_loss.shape != log_prob.shape:
            raise ValueError(
                f"'per_sample_loss' should have one loss per sample, shape "
                f"{tuple(log_prob.shape)}, but got {tuple(per_sample_loss.shape)}"
            )
        reward = -per_sample_loss.detach().to(log_prob.dtype)  # (B,)
        k = int(groups.max()) + 1
        counts = torch.bincount(groups, minlength=k).to(reward.dtype)  # (K,)
        group_reward = torch.zeros_like(counts).index_add_(0, groups, reward) / counts  # (K,)
        if self.baseline_kind == "rloo":
            if k < 2:  # a batch of one image (an epoch's last): no other sample to compare with
                return log_prob.sum() * 0.0
            baseline = (group_reward.sum() - group_reward) / (k - 1)  # (K,): the others' mean
        else:
            if not bool(self.baseline_ready):
                self.baseline.fill_(reward.mean())
                self.baseline_ready.fill_(True)
            baseline = self.baseline.expand(k)
        # log_prob is the same for every sample of a group: one term per permutation.
        advantage = (group_reward - baseline)[groups]  # (B,)
        loss = -(advantage * log_prob / counts[groups]).sum() / k
        with torch.no_grad():
            self.baseline.mul_(self.momentum).add_((1 - self.momentum) * reward.mean())
        return loss


def ramp_scores(order: torch.Tensor) -> torch.Tensor:
    """Scores whose descending sort is ``order``: a ramp from 0 down to -1 placed so that
    ``scores[order[k]]`` is the k-th largest. (REOrder's code writes ``ramp[order]``, which sorts
    to the inverse permutation.)"""
    n = order.numel()
    scores = torch.empty(n)
    scores[order] = torch.linspace(0.0, -1.0, n) if n > 1 else torch.zeros(1)
    return scores


def draw_share(draw: Callable[[], T], share: tuple[int, int]) -> T:
    """``draw()`` (a draw for the batch in hand) for share ``i`` of a batch cut into ``n`` equal
    consecutive shares, ``share = (i, n)``: the draws for the whole batch are made share by share,
    in order, and share ``i``'s is kept. Whoever holds which share, the shares' draws differ and
    the random state ends where the whole batch's draws leave it; on the CPU, where torch draws in
    sequence, the shares' draws are exactly one draw for the whole batch."""
    index, count = share
    kept = None
    for i in range(count):
        out = draw()
        if i == index:
            kept = out
    return kept


def _soft_aux(P: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagnostics of a soft permutation: its marginal error and mean row entropy."""
    P = P.detach()
    return {
        "marginal_error": marginal_error(P).max(),
        "row_entropy": -(P * P.clamp_min(1e-30).log()).sum(-1).mean(),
    }


def _sinkhorn_aux(P: torch.Tensor, fallbacks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagnostics of a soft permutation made by Sinkhorn iterations: its batch-mean
    :func:`~estimators.sinkhorn.mean_marginal_error` and how many calls fell back to the log
    domain."""
    return {"mean_marginal_error": mean_marginal_error(P.detach()).mean(),
            "log_domain_fallbacks": fallbacks}  # fmt: skip


def _with_fallbacks(relax, scores: torch.Tensor):
    """``relax(scores)`` and how many of its Sinkhorn calls fell back to the log domain."""
    before = fallback_count()
    P = relax(scores)
    return P, P.new_tensor(float(fallback_count() - before))


def _check_materialize_limit(value) -> int | None:
    """An int >= 0, or None for never (also spelt ``inf``: a config's ``null`` means the
    default)."""
    if value is None or (isinstance(value, float) and value == math.inf):
        return None
    return check_count("materialize_limit", value, minimum=0)


@dataclass(frozen=True)
class Wants:
    """What an estimator asks the model for before it orders the tokens; a training loop has the
    model answer and passes the answer as ``forward(tokens, features)``, ``features (B, N, F)``.

    ``kind``: ``"nothing"`` (the tokens suffice), ``"blocks"`` (the hidden states ``(B, N, D)``
    after the backbone's first ``blocks`` blocks, on the canonical order) or ``"probe"`` (what
    the model computes under the name ``probe``: the model defines the names it answers and
    refuses the others; the suite's are training-free saliencies).
    """

    kind: str = "nothing"
    blocks: int = 0
    probe: str = ""

    KINDS = ("nothing", "blocks", "probe")

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, self.KINDS)
        if self.kind == "probe" and not (isinstance(self.probe, str) and self.probe):
            raise ValueError(
                f"'probe' should name what the model computes (a non-empty str) with "
                f"kind='probe' but got {self.probe!r}"
            )


class PermutationEstimator(nn.Module):
    """Base of every estimator: ``num_tokens``, a settable ``tau`` and an ``init_order`` that eval
    returns exactly until training moves it.

    ``forward(tokens (B, N, D))`` returns a :class:`PermutationOutput`: in ``train()`` mode the
    estimator's training behaviour (soft, straight-through or sampled), in ``eval()`` mode always
    the hard permutation.

    ``materialize_limit`` (default 4096; ``0`` = always apply, ``None`` or ``inf`` = never; a
    config spells it ``.inf``, since ``null`` there means the default): above this many
    tokens an estimator with an apply path (:attr:`soft_path` ``"apply"``: SoftSort, saliency with
    its SoftSort relaxation, torchsort with ``kernel="l1"``) orders the tokens without forming
    ``P``, so ``out.soft`` is None and the diagnostics that need ``P`` are computed without it or
    left out; one that can only form ``P`` (``"matrix"``) refuses to be built for more tokens
    than that, since ``P`` would need ``B N^2`` floats (10 GB per image at N = 50,176).
    """

    doubly_stochastic = False  # whether ``out.soft`` also has unit column sums
    is_global = True  # one order for every image (``order()``); False: an order per image
    # How train mode orders the tokens: "apply" (a relaxation that can be applied without forming
    # P, used above ``materialize_limit`` tokens), "matrix" (forms P (B, N, N) only, so refuses
    # more than ``materialize_limit`` tokens) or "none" (hard or sampled orders, no P at all).
    # None: decided by the estimator's options; its __init__ sets it, then calls
    # ``check_materialize_limit()``.
    soft_path: str | None = "none"
    wants = Wants()  # what ``forward(tokens, features)`` needs from the model: nothing here
    # Keyword arguments beyond ``num_tokens`` that ``create_estimator`` must be given, each with
    # what it means: {"dim": "token width"}.
    extra_required: dict[str, str] = {}
    # ``(i, n)``: the tokens a forward gets are share ``i`` of ``n`` equal consecutive shares of
    # one batch (as when data-parallel processes split it; whoever splits it sets this). Draws
    # made per image are made for the whole batch and keep this share (:func:`draw_share`);
    # draws made once per batch need nothing.
    batch_share: tuple[int, int] = (0, 1)

    def __init__(
        self, num_tokens: int, *, tau: float = 1.0, init_order=None,
        materialize_limit: int | float | None = MATERIALIZE_LIMIT,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_tokens = check_count("num_tokens", num_tokens)
        self.tau = tau
        self.materialize_limit = _check_materialize_limit(materialize_limit)
        self.check_materialize_limit()
        init_order = _as_order(init_order, self.num_tokens)
        check_permutation_index("init_order", init_order, self.num_tokens)
        if init_order.dim() != 1:
            raise ValueError(
                f"'init_order' should be one permutation ({self.num_tokens},) but got shape "
                f"{tuple(init_order.shape)}"
            )
        self.register_buffer("init_order", init_order.clone())

    def check_materialize_limit(self) -> None:
        """Raise if this estimator would have to form ``P`` for more than ``materialize_limit``
        tokens."""
        limit, n = self.materialize_limit, self.num_tokens
        if self.soft_path == "matrix" and limit is not None and n > limit:
            gigabytes = 4 * n * n / 1e9
            raise ValueError(
                f"'materialize_limit' should be >= num_tokens={n} (or None: never apply) for an "
                f"estimator that can only form its soft permutation as a matrix, but got {limit}: "
                f"(B, {n}, {n}) is {gigabytes:.3g} GB per image in float32; softsort (or "
                f"saliency with relaxation='softsort', torchsort with kernel='l1') applies it in "
                f"O(N D)"
            )

    def applies(self) -> bool:
        """Whether train mode applies the relaxation without forming ``P``."""
        limit = self.materialize_limit
        return self.soft_path == "apply" and limit is not None and self.num_tokens > limit

    @property
    def tau(self) -> float:
        """The temperature (smaller = harder); may be set every step, to any positive real."""
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = check_positive("tau", value)

    def order(self) -> torch.Tensor:
        """The hard permutation ``(N,)`` that eval applies."""
        raise NotImplementedError

    def marginal_error(self) -> float | None:
        """How far the soft permutation that training uses is from doubly stochastic at the
        current ``tau`` (:func:`~estimators.sinkhorn.mean_marginal_error`, without noise), for
        the estimators that make it by Sinkhorn iterations, which may stop far from convergence;
        None for every other orderer (nothing of theirs iterates towards unit marginals)."""
        return None

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise unless ``tokens`` is a floating-point ``(B, num_tokens, D)`` tensor."""
        check_float_tensor("tokens", tokens, min_dim=3)
        if tokens.dim() != 3 or tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"'tokens' should be (B, {self.num_tokens}, D) but got {tuple(tokens.shape)}"
            )

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor | None = None
    ) -> PermutationOutput:
        """``features (B, N, F)``: the model's answer to :attr:`wants` (global estimators want
        nothing and ignore it)."""
        self.check_tokens(tokens)
        return self.train_forward(tokens) if self.training else self.hard_output(tokens)

    def hard_output(self, tokens: torch.Tensor) -> PermutationOutput:
        """``order()`` applied to every image: what eval returns; refused while a parameter is
        non-finite (a NaN score would still sort to a valid-looking order)."""
        self.check_finite_parameters()
        index = self.order().to(tokens.device).expand(tokens.shape[0], -1)  # (B, N)
        return self.indexed_output(tokens, index)

    def check_finite_parameters(self) -> None:
        """Raise :class:`~estimators._checks.NonFiniteError` naming the first parameter that
        holds NaN or inf: one reduction per parameter and one host sync, paid in eval only (in
        training a non-finite parameter reaches the tokens and the loss)."""
        params = list(self.named_parameters())
        if not params:
            return
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in params])
        if not bool(finite.all()):
            name, p = params[int((~finite).nonzero()[0, 0])]
            check_finite(name, p.detach())

    def indexed_output(self, tokens: torch.Tensor, index: torch.Tensor, **fields):
        """The :class:`PermutationOutput` that applies ``index (B, N)``, an index this estimator
        has just built (a sort or a sample), plus ``fields`` (``log_prob``, ``aux``). Unchecked:
        a built index is a permutation, and :func:`apply_permutation`'s check costs a device
        sync per call."""
        return PermutationOutput(_permute_tokens(tokens, index), index, **fields)

    def train_forward(self, tokens: torch.Tensor) -> PermutationOutput:
        """The estimator's training behaviour on checked ``tokens (B, N, D)``."""
        raise NotImplementedError

    def surrogate_loss(self, out: PermutationOutput, per_sample_loss: torch.Tensor):
        """The score-function term to add to the task loss; zero for pathwise estimators."""
        return per_sample_loss.new_zeros(())

    def extra_repr(self) -> str:
        """``num_tokens``, ``tau`` and whether P is formed, for ``repr(est)``."""
        path = f", soft_path={self.soft_path!r}" if self.soft_path != "none" else ""
        applies = ", applies P without forming it" if self.applies() else ""
        return f"num_tokens={self.num_tokens}, tau={self.tau:g}{path}{applies}"


def _as_order(init_order, n: int) -> torch.Tensor:
    """``init_order`` as a tensor (None: the identity), or a TypeError in words."""
    if init_order is None:
        return torch.arange(n)
    accepted = f"'init_order' should be a permutation of range({n}) (a LongTensor, list or array)"
    if isinstance(init_order, str):
        raise TypeError(
            f"{accepted} but got the name {init_order!r}; the estimators take orders, not scan-"
            f"order names: e.g. diffsort_reorder.orderings.scan_order({init_order!r}, H, W)"
        )
    try:
        return torch.as_tensor(init_order)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{accepted} but got {type(init_order).__name__}: {err}") from None


def _check_samples(samples: str) -> str:
    return check_choice("samples", samples, SAMPLES)
