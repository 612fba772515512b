"""``python -m diffsort_reorder.priors``: compute a data-derived order on a dataset (the priors
live in :mod:`diffsort_reorder.orders.priors`)."""

from ..orders.priors import PRIORS, prior_order

__all__ = ["PRIORS", "prior_order"]
