"""What ``method=`` and an estimator's ``init`` may name, resolved to an orderer module.

A method is a scan order (``row_major``, ``hilbert``, ...), ``oracle`` (datasets that define one),
a prior (``compression_prior``, ``collapse_prior``, computed on the training images), any
registered estimator, or a training-free per-image order (``saliency_gradient``,
``saliency_attention``). Every orderer
is a :class:`estimators.PermutationEstimator`, so the training loop runs them all the same way:
fixed orders are estimators without parameters.
"""

from __future__ import annotations

import torch

from estimators import (
    PermutationEstimator,
    Wants,
    create_estimator,
    list_estimators,
)
from estimators.registry import ESTIMATORS

from .priors import PRIORS, prior_order
from .scans import ORDERINGS, scan_order


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
    canonical order (``probe``: ``"gradient"`` or ``"attention"``, asked for through
    :attr:`wants`), the most salient placed at the ``end`` (where a backbone that reads its last
    token reads; REOrder saw learned orders move salient patches there) or at the ``start``. No
    parameters; the same in training and eval."""

    is_global = False
    PLACES = ("end", "start")

    def __init__(self, num_tokens: int, probe: str = "gradient", place: str = "end") -> None:
        super().__init__(num_tokens)
        if place not in self.PLACES:
            raise ValueError(f"'place' should be one of {self.PLACES} but got {place!r}")
        self.place = place
        self.wants = Wants("probe", probe=probe)  # a saliency the model computes

    def order(self) -> torch.Tensor:
        return self.init_order

    def forward(self, tokens, features=None):
        self.check_tokens(tokens)
        expected = (*tokens.shape[:2], 1)
        if features is None or tuple(features.shape) != expected:
            raise ValueError(
                f"'features' should be the saliency (B, N, 1) = {expected} but got "
                f"{None if features is None else tuple(features.shape)}"
            )
        saliency = features[..., 0]  # (B, N)
        index = saliency.argsort(dim=-1, descending=self.place == "start", stable=True)  # (B, N)
        return self.indexed_output(tokens, index)


# training-free per-image methods -> their probe
PROBES = {"saliency_gradient": "gradient", "saliency_attention": "attention"}
KINDS = ("scan", "prior", "probe", "learned", "oracle")
# The orders an estimator may start from in a study (and the fixed orders it is compared with).
STARTS = (*ORDERINGS, *PRIORS)


def fixed_orders() -> list[str]:
    return [*sorted(ORDERINGS), "oracle", *PRIORS]


def list_methods() -> list[str]:
    return [*fixed_orders(), *PROBES, *list_estimators()]


def kind_of(method: str) -> str:
    """One of :data:`KINDS`: ``scan`` orders and ``prior`` orders are fixed, a ``probe`` orders
    each image without training, ``learned`` methods are estimators, ``oracle`` cheats."""
    if method in ORDERINGS:
        return "scan"
    if method in PRIORS:
        return "prior"
    if method in PROBES:
        return "probe"
    if method in list_estimators():
        return "learned"
    if method == "oracle":
        return "oracle"
    raise ValueError(f"unknown method {method!r}; available methods: {', '.join(list_methods())}")


def is_learned(method: str) -> bool:
    """Estimators are searched and trained; every other kind is simply run."""
    return kind_of(method) == "learned"


def is_per_image(method: str) -> bool:
    """An order per image: the training-free probes and per-image estimators (saliency)."""
    kind = kind_of(method)
    return kind == "probe" or (kind == "learned" and not ESTIMATORS[method].is_global)


def learns_one_order(method: str) -> bool:
    """A learned method with one order for every image: what the retrain protocol freezes."""
    return is_learned(method) and not is_per_image(method)


def is_fixed(method: str) -> bool:
    """A scan order or a prior: one order for every image, known before training."""
    return kind_of(method) in ("scan", "prior")


def check_not_oracle(where: str, names) -> None:
    """The rule every study follows: real data has no oracle order, so a study neither compares
    against it nor starts an estimator from it."""
    if "oracle" in list(names):
        raise ValueError(
            f"{where} names 'oracle'; a study never compares against or starts from the oracle "
            f"order (real data has none)"
        )


def check_start_orders(where: str, names) -> None:
    """Orders an estimator may start from in a study: a scan order or a prior."""
    check_not_oracle(where, names)
    unknown = sorted(set(names) - set(STARTS))
    if unknown:
        raise ValueError(
            f"{where} names {unknown}; an estimator starts from one of {', '.join(STARTS)}"
        )


def check_order(order, num_tokens: int) -> torch.Tensor:
    """``order=`` (an explicit order, e.g. the retrain protocol's frozen learned order) as a
    LongTensor ``(N,)``."""
    tensor = torch.as_tensor(list(order))
    if tensor.dtype != torch.long or not torch.equal(
        tensor.sort().values, torch.arange(num_tokens)
    ):
        raise ValueError(
            f"'order' should be a permutation of range({num_tokens}) (one entry per patch) but "
            f"got {len(tensor)} entries"
        )
    return tensor


def resolve_order(
    name: str, dataset, grid: tuple[int, int], patch_size: int | None = None, prior_cfg=None
) -> torch.Tensor:
    """The order ``(N,)`` that ``name`` stands for on ``dataset``'s ``grid``; a prior uses
    ``prior_cfg.options`` when ``prior_cfg`` is that prior's config, else its defaults."""
    if name in ORDERINGS:
        return scan_order(name, *grid)
    if name == "oracle":
        return dataset.oracle_order()
    if name in PRIORS:
        settings = {}
        if prior_cfg is not None and prior_cfg.get("name") == name:
            settings = dict(prior_cfg.get("options") or {})
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
    order=None,
) -> PermutationEstimator:
    """The orderer for ``method``; estimators start from ``estimator_cfg.init`` (a fixed order or
    a prior) with ``estimator_cfg.options``; those that score tokens get ``dim=token_dim``. An
    explicit ``order`` (a list) replaces the method's: the order is fixed for the whole run."""
    if order is not None:
        return FixedOrder(check_order(order, grid[0] * grid[1]))
    if method in list_estimators():
        if estimator_cfg is None or estimator_cfg.get("name") != method:
            raise ValueError(f"method {method!r} is an estimator but no 'estimator' config for it")
        init_name = estimator_cfg.get("init", "row_major")
        init = resolve_order(init_name, dataset, grid, patch_size, prior_cfg)
        hparams = dict(estimator_cfg.get("options") or {})
        if "dim" in ESTIMATORS[method].extra_required:
            hparams.setdefault("dim", token_dim)
        return create_estimator(method, num_tokens=init.numel(), init_order=init, **hparams)
    if method in fixed_orders():
        return FixedOrder(resolve_order(method, dataset, grid, patch_size, prior_cfg))
    if method in PROBES:
        return SaliencyProbeOrder(grid[0] * grid[1], probe=PROBES[method])
    raise ValueError(f"unknown method {method!r}; available methods: {', '.join(list_methods())}")
