"""The Hydra configs, shipped inside the package as ``diffsort_reorder.configs``."""
