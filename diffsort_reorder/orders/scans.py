"""Fixed scan orders over a patch grid.

An order is a LongTensor ``(H*W,)`` where ``order[k]`` is the row-major index of the patch placed
at sequence slot ``k`` (the same meaning as a hard permutation ``index`` in ``estimators``):
``tokens[:, order]`` turns row-major tokens into the scanned sequence.

Definitions follow REOrder (arXiv 2505.23751, appendix F), with two deliberate differences from its
released code: ``hilbert`` is a generalized Hilbert curve that stays continuous on any grid (the
released code crops a 16x16 curve to 14x14 and jumps five times), and ``diagonal`` scans
anti-diagonals by increasing row, as the paper defines it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from estimators.registry import Registry

OrderFn = Callable[[int, int], list[int]]
ORDERINGS = Registry("scan order", "orders")  # name -> OrderFn (height, width) -> order


def register_order(name: str) -> Callable[[OrderFn], OrderFn]:
    """Function decorator: register a scan order ``fn(height, width) -> list`` as ``name``."""
    return ORDERINGS.register(name)


def list_orders() -> list[str]:
    return ORDERINGS.names()


def scan_order(name: str, height: int, width: int) -> torch.Tensor:
    """Return the scan order ``name`` over a ``height x width`` grid as a LongTensor ``(H*W,)``."""
    if not isinstance(name, str):
        raise TypeError(f"'name' should be a str but got {type(name).__name__}")
    order_fn = ORDERINGS.lookup(name)
    for arg, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"'{arg}' should be a positive int but got {value!r}")
        if value <= 0:
            raise ValueError(f"'{arg}' should be a positive int but got {value}")
    order = torch.tensor(order_fn(height, width), dtype=torch.long)
    assert order.numel() == height * width, (name, height, width)
    return order


@register_order("row_major")
def _row_major(height: int, width: int) -> list[int]:
    return list(range(height * width))


@register_order("column_major")
def _column_major(height: int, width: int) -> list[int]:
    return [r * width + c for c in range(width) for r in range(height)]


@register_order("boustrophedon")
def _boustrophedon(height: int, width: int) -> list[int]:
    """Rows alternately left-to-right and right-to-left: row-major without the line jumps."""
    order = []
    for r in range(height):
        cols = range(width) if r % 2 == 0 else range(width - 1, -1, -1)
        order.extend(r * width + c for c in cols)
    return order


@register_order("spiral")
def _spiral(height: int, width: int) -> list[int]:
    """Clockwise, inward, from the top-left corner."""
    top, bottom, left, right = 0, height - 1, 0, width - 1
    order = []
    while top <= bottom and left <= right:
        order.extend(top * width + c for c in range(left, right + 1))
        order.extend(r * width + right for r in range(top + 1, bottom + 1))
        if top < bottom:
            order.extend(bottom * width + c for c in range(right - 1, left - 1, -1))
        if left < right:
            order.extend(r * width + left for r in range(bottom - 1, top, -1))
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return order


def _anti_diagonal(s: int, height: int, width: int) -> range:
    """Rows of the cells with ``r + c == s``, by increasing row."""
    return range(max(0, s - width + 1), min(s, height - 1) + 1)


@register_order("diagonal")
def _diagonal(height: int, width: int) -> list[int]:
    """Anti-diagonals ``r + c = s`` by increasing ``s``, each by increasing row."""
    return [
        r * width + (s - r)
        for s in range(height + width - 1)
        for r in _anti_diagonal(s, height, width)
    ]


@register_order("snake")
def _snake(height: int, width: int) -> list[int]:
    """JPEG zig-zag: anti-diagonals in alternating direction, so every step touches the last."""
    order = []
    for s in range(height + width - 1):
        rows = _anti_diagonal(s, height, width)
        order.extend(r * width + (s - r) for r in (rows if s % 2 else reversed(rows)))
    return order


@register_order("z_order")
def _z_order(height: int, width: int) -> list[int]:
    """Morton order: interleave the bits of (row, column); cells outside the grid are skipped."""

    def morton(r: int, c: int) -> int:
        code = 0
        for bit in range(max(height, width).bit_length()):
            code |= ((c >> bit) & 1) << (2 * bit) | ((r >> bit) & 1) << (2 * bit + 1)
        return code

    cells = [(r, c) for r in range(height) for c in range(width)]
    return [r * width + c for r, c in sorted(cells, key=lambda rc: morton(*rc))]


@register_order("hilbert")
def _hilbert(height: int, width: int) -> list[int]:
    """Generalized Hilbert ("gilbert") curve from (0, 0): continuous on any grid, every step moves
    to a touching cell, and on a 2^k x 2^k grid it is the Hilbert curve."""
    if width >= height:
        cells = _gilbert(0, 0, width, 0, 0, height)
    else:
        cells = _gilbert(0, 0, 0, height, width, 0)
    return [y * width + x for x, y in cells]


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> Iterator[tuple[int, int]]:
    """Fill the rectangle spanned by the major axis (ax, ay) and minor axis (bx, by) from (x, y),
    ending next to (x + ax, y + ay) - unit step. Coordinates are (column, row)."""
    w, h = abs(ax + ay), abs(bx + by)
    dax, day = _sign(ax), _sign(ay)
    dbx, dby = _sign(bx), _sign(by)

    if h == 1:  # a single line along the major axis
        for i in range(w):
            yield x + i * dax, y + i * day
        return
    if w == 1:  # a single line along the minor axis
        for i in range(h):
            yield x + i * dbx, y + i * dby
        return

    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)

    if 2 * w > 3 * h:
        # Long rectangle: split along the major axis only. Odd halves would force a diagonal step.
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        yield from _gilbert(x, y, ax2, ay2, bx, by)
        yield from _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        return

    # Hilbert step: up the first half of the minor axis, across the whole major axis, back down.
    if h2 % 2 and h > 2:
        bx2, by2 = bx2 + dbx, by2 + dby
    yield from _gilbert(x, y, bx2, by2, ax2, ay2)
    yield from _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
    yield from _gilbert(
        x + (ax - dax) + (bx2 - dbx),
        y + (ay - day) + (by2 - dby),
        -bx2,
        -by2,
        -(ax - ax2),
        -(ay - ay2),
    )


def step_distances(order: torch.Tensor, width: int) -> torch.Tensor:
    """Chebyshev distance on the grid between consecutive slots: 1 means the patches touch."""
    rows, cols = order.div(width, rounding_mode="floor"), order.remainder(width)
    return torch.maximum(rows.diff().abs(), cols.diff().abs())


def main(argv: list[str] | None = None) -> None:
    """Print every scan order's continuity on a grid and draw them all to one PNG."""
    import argparse
    import json

    from ..plotting import save_orders_png

    parser = argparse.ArgumentParser(prog="python -m diffsort_reorder.orderings")
    parser.add_argument("--height", type=int, default=14)
    parser.add_argument("--width", type=int, default=14)
    parser.add_argument("--out", default="outputs/orders.png", help="PNG of all orders")
    args = parser.parse_args(argv)

    orders = {name: scan_order(name, args.height, args.width) for name in list_orders()}
    print(f"{'order':<14} {'jumps':>5} {'mean step':>9}   (grid {args.height}x{args.width})")
    for name, order in orders.items():
        steps = step_distances(order, args.width).float()
        jumps = int((steps > 1).sum()) if steps.numel() else 0
        mean = float(steps.mean()) if steps.numel() else 0.0
        print(f"{name:<14} {jumps:>5} {mean:>9.2f}")
    path = save_orders_png(orders, args.height, args.width, args.out, traced=list(orders))
    print(json.dumps({"png": str(path), "orders": list(orders)}))


if __name__ == "__main__":
    main()
