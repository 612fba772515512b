"""Estimators that sample permutations: Gumbel-Sinkhorn (a learned log-alpha, pathwise) and
Plackett-Luce trained by REINFORCE (REOrder's baseline, and its leave-one-out variant)."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_choice, check_count, check_finite, check_nonnegative, check_positive
from .base import (
    MATERIALIZE_LIMIT,
    PermutationEstimator,
    _check_samples,
    _Reinforce,
    _sinkhorn_aux,
    _soft_aux,
    _with_fallbacks,
    draw_share,
    ramp_scores,
)
from .permutation import PermutationOutput, apply_permutation, hard_permutation
from .plackett_luce import _log_prob, _sample, _sequential_entropy
from .registry import register_estimator
from .relaxations import sort_permutation
from .sinkhorn import BACKWARDS, gumbel_sinkhorn, mean_marginal_error, sample_gumbel


@register_estimator("gumbel_sinkhorn")
class GumbelSinkhornEstimator(PermutationEstimator):
    """A learned ``N x N`` log-alpha, Gumbel noise, Sinkhorn (Mena et al. 2018). Eval: the
    Hungarian assignment of log-alpha. ``init_scale`` is log-alpha's margin for ``init_order``."""

    doubly_stochastic = True
    soft_path = "matrix"

    def __init__(
        self, num_tokens, *, tau=1.0, init_order=None, n_iters=20, noise=1.0, samples="batch",
        hard=False, backward="unrolled", init_scale=1.0, materialize_limit=MATERIALIZE_LIMIT,
    ):  # fmt: skip
        super().__init__(
            num_tokens, tau=tau, init_order=init_order, materialize_limit=materialize_limit
        )
        self.n_iters = check_count("n_iters", n_iters)
        self.noise = check_nonnegative("noise", noise)
        self.samples = _check_samples(samples)
        self.backward_mode = check_choice("backward", backward, BACKWARDS)
        self.hard = bool(hard)
        one_hot = nn.functional.one_hot(self.init_order, num_tokens).float()  # (N, N)
        self.log_alpha = nn.Parameter(check_positive("init_scale", init_scale) * one_hot)

    def order(self) -> torch.Tensor:
        return hard_permutation(self.log_alpha.detach())

    def marginal_error(self) -> float:
        """The mean marginal error of ``gumbel_sinkhorn(log_alpha)`` at the current ``tau`` and
        ``n_iters``, without Gumbel noise (deterministic; ``aux`` reports the noisy one)."""
        with torch.no_grad():
            log_alpha = self.log_alpha.detach().float()  # (N, N)
            P = gumbel_sinkhorn(log_alpha, self.tau, self.n_iters, noise=0.0)
        return float(mean_marginal_error(P))

    def train_forward(self, tokens: torch.Tensor) -> PermutationOutput:
        b = tokens.shape[0]
        draws = b if self.samples == "image" else 1
        log_alpha = self.log_alpha.expand(draws, -1, -1)  # (S, N, N), never in half precision
        noise = self.noise
        if self.samples == "image" and noise:  # this share's noise of the whole batch's
            gumbel = draw_share(lambda: sample_gumbel(log_alpha.shape, log_alpha), self.batch_share)
            log_alpha, noise = log_alpha + noise * gumbel, 0.0  # as gumbel_sinkhorn adds it
        P, fallbacks = _with_fallbacks(
            lambda x: gumbel_sinkhorn(
                x, self.tau, self.n_iters, noise, backward=self.backward_mode
            ),
            log_alpha,
        )  # (S, N, N)
        index = hard_permutation(P).expand(b, -1)  # (B, N)
        aux = {**_soft_aux(P), **_sinkhorn_aux(P, fallbacks)}
        if self.hard:
            hard = nn.functional.one_hot(index[:draws], self.num_tokens).to(P.dtype)
            P = hard - P.detach() + P
        out = apply_permutation(tokens, soft=P)
        return PermutationOutput(out, index, soft=P.expand(b, -1, -1), aux=aux)


@register_estimator("plackett_luce")
class PlackettLuceEstimator(_Reinforce, PermutationEstimator):
    """REINFORCE over a Plackett-Luce policy with one logit per token (REOrder's baseline).

    Reward = minus the per-sample task loss. ``samples="batch"`` draws ``num_samples``
    permutations per step and gives image ``b`` permutation ``b % num_samples`` (REOrder: one);
    ``samples="image"`` draws one per image. ``baseline``: ``"ema"`` (REOrder's, an EMA of the
    mean reward with ``momentum``) or ``"rloo"`` (leave-one-out over the step's permutations; needs
    at least two). Optional entropy bonus ``entropy_weight * H`` with H the conditional entropies
    summed along the first sampled permutation, whose expectation is the entropy; its gradient is
    the pathwise part only (the score-function part, ``E[H grad log p]``, is left out).
    """

    def __init__(
        self, num_tokens, *, tau=1.0, init_order=None, samples="batch", momentum=0.99,
        entropy_weight=0.0, num_samples=1, baseline="ema", materialize_limit=MATERIALIZE_LIMIT,
    ):  # fmt: skip
        super().__init__(
            num_tokens, tau=tau, init_order=init_order, materialize_limit=materialize_limit
        )
        self.samples = _check_samples(samples)
        self.num_samples = num_samples = check_count("num_samples", num_samples)
        if samples == "image" and num_samples != 1:
            raise ValueError(
                f"'num_samples' applies to samples='batch' (samples='image' draws one permutation "
                f"per image) but got num_samples={num_samples} with samples='image'"
            )
        if baseline == "rloo" and samples == "batch" and num_samples < 2:
            raise ValueError(
                f"'num_samples' should be >= 2 with baseline='rloo' (a leave-one-out baseline "
                f"needs other permutations) but got {num_samples}"
            )
        self.init_reinforce(momentum, entropy_weight, baseline)
        self.logits = nn.Parameter(ramp_scores(self.init_order))

    def order(self) -> torch.Tensor:
        return sort_permutation(self.logits.detach())

    def draws(self, batch: int) -> int:
        """How many permutations a step of ``batch`` images draws."""
        return batch if self.samples == "image" else min(self.num_samples, batch)

    def groups(self, batch: int, device) -> torch.Tensor:
        """``(B,)``: which of the step's permutations each image uses."""
        return torch.arange(batch, device=device) % max(1, self.draws(batch))

    def train_forward(self, tokens: torch.Tensor) -> PermutationOutput:
        b = tokens.shape[0]
        groups, k = self.groups(b, tokens.device), self.draws(b)  # (B,), K
        # The step's one host sync: a NaN logit would still sample a valid-looking permutation.
        check_finite("logits", self.logits)
        # Per batch: one draw, whatever share of the batch this is; per image: this share's.
        share = self.batch_share if self.samples == "image" else (0, 1)
        draws = draw_share(lambda: _sample(self.logits, k, self.tau), share)  # (K, N)
        index = draws.to(tokens.device)[groups]  # (B, N)
        log_prob = _log_prob(self.logits, index, self.tau)  # (B,), at sampling tau
        aux = {"log_prob": log_prob.detach().mean(), "baseline": self.baseline.clone()}
        return self.indexed_output(tokens, index, log_prob=log_prob, aux=aux)

    def surrogate_loss(self, out: PermutationOutput, per_sample_loss: torch.Tensor):
        if out.log_prob is None:  # an eval (hard, not sampled) output: nothing to reinforce
            return per_sample_loss.new_zeros(())
        groups = self.groups(out.log_prob.shape[0], out.log_prob.device)
        loss = self.reinforce(out.log_prob, per_sample_loss, groups)
        if self.entropy_weight:
            entropy = _sequential_entropy(self.logits, out.index[:1], self.tau)
            loss = loss - self.entropy_weight * entropy.mean()
        return loss


@register_estimator("plackett_luce_rloo")
class PlackettLuceRLOOEstimator(PlackettLuceEstimator):
    """The same policy with ``num_samples`` permutations per step and the leave-one-out baseline
    (Kool et al. 2019): a fair REINFORCE baseline at the same cost per step, since the batch's
    images are shared among the permutations rather than repeated."""

    def __init__(
        self, num_tokens, *, tau=1.0, init_order=None, momentum=0.99, entropy_weight=0.0,
        num_samples=4, materialize_limit=MATERIALIZE_LIMIT,
    ):  # fmt: skip
        super().__init__(
            num_tokens, tau=tau, init_order=init_order, samples="batch", momentum=momentum,
            entropy_weight=entropy_weight, num_samples=num_samples, baseline="rloo",
            materialize_limit=materialize_limit,
        )  # fmt: skip
