"""diffsort-reorder: compare permutation estimators that learn patch orders for sequence models."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait by spinning take the cores of every other process (a study's workers,
# a second run beside this one): told to sleep instead, two runs on two cores each keep their
# speed. OpenMP reads this once, when torch loads it, so it is set here, before any import of
# torch in the package; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
