"""Data-derived patch orders to compare estimators against and to start them from.

``compression_prior`` (REOrder) picks a scan order by how compressible the dataset's patch stream
is in it; ``collapse_prior`` (The Collapse of Patches) ranks patches by how much the others depend
on them. Both are cached on disk by a fingerprint of the images and settings. As ``method=`` or an
estimator's ``init`` they are named ``compression_prior`` and ``collapse_prior``.
"""

from __future__ import annotations

import torch

from estimators.registry import Registry

from .collapse import CollapsePrior, collapse_prior, pagerank
from .compression import CompressionPrior, compression_prior

PRIORS = Registry("prior")  # name -> prior(images, patch_size, **settings), with an ``order``
PRIORS.register("compression_prior", compression_prior)
PRIORS.register("collapse_prior", collapse_prior)


def prior_images(dataset, max_images: int, seed: int) -> torch.Tensor:
    """Up to ``max_images`` training images ``(M, C, H, W)`` in [0, 1], a seeded random subset
    (unflipped, not normalised)."""
    n = len(dataset)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(n, max_images)]
    return dataset.unit_images(idx)


def prior_order(name: str, dataset, patch_size: int, settings: dict | None = None):
    """The order ``(N,)`` prior ``name`` gives on ``dataset``; ``settings`` are the prior's
    keyword arguments plus ``max_images`` (how many training images it reads)."""
    prior = PRIORS.lookup(name)
    settings = dict(settings or {})
    max_images = settings.pop("max_images", 2048)
    images = prior_images(dataset, max_images, settings.get("seed", 0))
    return prior(images, patch_size, **settings).order


__all__ = [
    "PRIORS",
    "CollapsePrior",
    "CompressionPrior",
    "collapse_prior",
    "compression_prior",
    "pagerank",
    "prior_order",
]
