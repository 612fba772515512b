"""``python -m diffsort_reorder.train``: one training run (the code lives in :mod:`.run`)."""

from .run.cli import console, main

__all__ = ["console", "main"]

if __name__ == "__main__":
    main()
