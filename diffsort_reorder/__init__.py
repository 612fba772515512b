"""diffsort-reorder: compare permutation estimators that learn patch orders for sequence models."""

__version__ = "0.1.0"
