"""What ``method=`` and an estimator's ``init`` may name, resolved to an orderer module.

A method is a scan order (``row_major``, ``hilbert``, ...), ``oracle`` (datasets that define one),
a prior (``compression_prior``, ``collapse_prior``, computed on the training images), any
registered estimator, or a training-free per-image order (``saliency_gradient``,
``saliency_attention``). Every orderer
is a :class:`estimators.PermutationEstimator`, so the training loop runs them all the same way:
fixed orders are estimators without parameters.
"""

from __future__ import annotations

import inspect

import torch

from estimators import (
    PermutationEstimator,
    PermutationOutput,
    apply_permutation,
    create_estimator,
    list_estimators,
)
from estimators.registry import ESTIMATORS

from .orderings import ORDERINGS, scan_order
from .priors import PRIORS, prior_order


class FixedOrder(PermutationEstimator):
    """A fixed permutation, in training and in eval."""

    def __init__(self, order: torch.Tensor) -> None:
        super().__init__(order.numel(), init_order=order)

    def order(self) -> torch.Tensor:
        return self.init_order

    def train_forward(self, tokens):
        return self.hard_output(tokens)


class SaliencyProbeOrder(PermutationEstimator):
    """A training-free per-image order: patches sorted by a saliency the model computes on the
    canonical order (``probe``: ``"gradient"`` or ``"attention"``), the most salient placed at
    the ``end`` (where a backbone that reads its last token reads; REOrder saw learned orders move
    salient patches there) or at the ``start``. No parameters; the same in training and eval."""

    is_global = False
    PLACES = ("end", "start")

    def __init__(self, num_tokens: int, probe: str = "gradient", place: str = "end") -> None:
        super().__init__(num_tokens)
        if place not in self.PLACES:
            raise ValueError(f"'place' should be one of {self.PLACES} but got {place!r}")
        self.probe, self.place = probe, place

    def order(self) -> torch.Tensor:
        return self.init_order

    def forward(self, tokens, features=None):
        self.check_tokens(tokens)
        if features is None or features.shape != tokens.shape[:2]:
            raise ValueError(
                f"'features' should be the saliency (B, N) = {tuple(tokens.shape[:2])} but got "
                f"{None if features is None else tuple(features.shape)}"
            )
        index = features.argsort(dim=-1, descending=self.place == "start", stable=True)  # (B, N)
        return PermutationOutput(apply_permutation(tokens, index=index), index)


# training-free per-image methods -> their probe
PROBES = {"saliency_gradient": "gradient", "saliency_attention": "attention"}


def fixed_orders() -> list[str]:
    return [*sorted(ORDERINGS), "oracle", *PRIORS]


def list_methods() -> list[str]:
    return [*fixed_orders(), *PROBES, *list_estimators()]


def resolve_order(
    name: str, dataset, grid: tuple[int, int], patch_size: int | None = None, prior_cfg=None
) -> torch.Tensor:
    """The order ``(N,)`` that ``name`` stands for on ``dataset``'s ``grid``; a prior uses
    ``prior_cfg.settings`` when ``prior_cfg`` is that prior's config, else its defaults."""
    if name in ORDERINGS:
        return scan_order(name, *grid)
    if name == "oracle":
        return dataset.oracle_order()
    if name in PRIORS:
        settings = {}
        if prior_cfg is not None and prior_cfg.get("name") == name:
            settings = dict(prior_cfg.get("settings") or {})
        return prior_order(name, dataset, patch_size, settings)
    raise ValueError(
        f"unknown order {name!r}; a fixed order is one of: {', '.join(fixed_orders())}"
    )


def build_orderer(
    method: str,
    dataset,
    grid: tuple[int, int],
    estimator_cfg=None,
    patch_size: int | None = None,
    prior_cfg=None,
    token_dim: int | None = None,
) -> PermutationEstimator:
    """The orderer for ``method``; estimators start from ``estimator_cfg.init`` (a fixed order or
    a prior) with ``estimator_cfg.hparams``; those that score tokens get ``dim=token_dim``."""
    if method in list_estimators():
        if estimator_cfg is None or estimator_cfg.get("name") != method:
            raise ValueError(f"method {method!r} is an estimator but no 'estimator' config for it")
        init_name = estimator_cfg.get("init", "row_major")
        init = resolve_order(init_name, dataset, grid, patch_size, prior_cfg)
        hparams = dict(estimator_cfg.get("hparams") or {})
        if "dim" in inspect.signature(ESTIMATORS[method]).parameters:
            hparams.setdefault("dim", token_dim)
        return create_estimator(method, num_tokens=init.numel(), init_order=init, **hparams)
    if method in fixed_orders():
        return FixedOrder(resolve_order(method, dataset, grid, patch_size, prior_cfg))
    if method in PROBES:
        return SaliencyProbeOrder(grid[0] * grid[1], probe=PROBES[method])
    raise ValueError(f"unknown method {method!r}; available methods: {', '.join(list_methods())}")
