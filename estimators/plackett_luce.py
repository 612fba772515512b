"""The Plackett-Luce distribution over permutations, at temperature ``tau``.

``P(pi) = prod_i exp(z_{pi_i} / tau) / sum_{k >= i} exp(z_{pi_k} / tau)``: items are drawn one at
a time without replacement, each with probability proportional to ``exp(z / tau)``. Sampling is
Gumbel-top-k (``argsort(z / tau + g)``, descending), and the log-probability is taken at the same
``tau`` the samples were drawn at (REOrder's code samples at ``tau`` but scores at ``tau = 1``).
Half-precision logits (autocast) are computed in float32: bf16 rounding divided by a small ``tau``
costs whole nats. Logits holding NaN or inf are refused (a ValueError naming ``logits``; one
reduction and one host sync per call): a NaN logit would still give a valid-looking permutation.
"""

from __future__ import annotations

import torch

from ._checks import (
    check_count,
    check_finite,
    check_float_tensor,
    check_permutation_index,
    check_positive,
    check_same_device,
)
from ._precision import full_precision
from .sinkhorn import sample_gumbel


@full_precision
def plackett_luce_sample(
    logits: torch.Tensor,
    num_samples: int = 1,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw permutations ``(num_samples, ..., N)`` from logits ``(..., N)`` (no gradient)."""
    check_float_tensor("logits", logits)
    num_samples = check_count("num_samples", num_samples)
    tau = check_positive("tau", tau)
    return _sample(check_finite("logits", logits), num_samples, tau, generator)


@full_precision
def _sample(logits, num_samples: int, tau: float, generator=None) -> torch.Tensor:
    """:func:`plackett_luce_sample` unchecked (an estimator's training step checks its logits
    where it syncs anyway, or lets a non-finite one reach the loss)."""
    z = logits.detach()
    perturbed = z / tau + sample_gumbel((num_samples, *z.shape), z, generator)
    return perturbed.argsort(dim=-1, descending=True)


def _checked(logits: torch.Tensor, index: torch.Tensor, tau: object) -> float:
    """The public functions' checks; ``tau`` as a float."""
    check_float_tensor("logits", logits)
    tau = check_positive("tau", tau)
    check_finite("logits", logits)
    check_permutation_index("index", index, logits.shape[-1])
    check_same_device(logits=logits, index=index)
    return tau


def _ordered_logits(logits: torch.Tensor, index: torch.Tensor, tau: float) -> torch.Tensor:
    shape = torch.broadcast_shapes(logits.shape, index.shape)
    return (logits / tau).expand(shape).gather(-1, index.expand(shape))  # z_{pi_i} / tau


@full_precision
def plackett_luce_log_prob(
    logits: torch.Tensor, index: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """``log P(index)`` under Plackett-Luce with logits ``(..., N)`` at temperature ``tau``:
    ``sum_i [z_{pi_i} - logsumexp_{k >= i} z_{pi_k}] / tau`` -> shape ``(...)`` (broadcast).
    Every row of ``index`` must be a permutation of ``range(N)``."""
    return _log_prob(logits, index, _checked(logits, index, tau))


@full_precision
def _log_prob(logits: torch.Tensor, index: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`plackett_luce_log_prob` unchecked, for an index the caller has just sampled."""
    g = _ordered_logits(logits, index, tau)  # (..., N)
    tail = g.flip(-1).logcumsumexp(-1).flip(-1)  # logsumexp over the items not yet drawn
    return (g - tail).sum(-1)


@full_precision
def plackett_luce_sequential_entropy(
    logits: torch.Tensor, index: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """``sum_i H(pi_i | pi_<i)`` along the permutation ``index``: its expectation over samples is
    the entropy of the Plackett-Luce distribution. Shape ``(...)``."""
    return _sequential_entropy(logits, index, _checked(logits, index, tau))


@full_precision
def _sequential_entropy(logits: torch.Tensor, index: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`plackett_luce_sequential_entropy` unchecked, for an index the caller has sampled."""
    g = _ordered_logits(logits, index, tau)  # (..., N)
    n = g.shape[-1]
    # remaining[i, k]: item k (in drawn order) is still available at step i, i.e. k >= i
    remaining = torch.ones(n, n, dtype=torch.bool, device=g.device).triu()  # (N, N)
    masked = g.unsqueeze(-2).masked_fill(~remaining, float("-inf"))  # (..., N, N)
    log_p = masked.log_softmax(-1)
    return -(log_p.exp() * log_p.masked_fill(~remaining, 0.0)).sum((-1, -2))
