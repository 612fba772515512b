"""Scan orders over the patch grid, public API: ``from diffsort_reorder.orderings import
ORDERINGS, scan_order`` (the code lives in :mod:`.orders.scans`)."""

from .orders.scans import ORDERINGS, list_orders, main, scan_order, step_distances

__all__ = ["ORDERINGS", "list_orders", "main", "scan_order", "step_distances"]

if __name__ == "__main__":
    main()
