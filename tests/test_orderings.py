"""Scan orders: permutations on any grid, DESIGN.md examples, continuity, Hilbert structure."""

import pytest
import torch

from diffsort_reorder.orders.scans import (
    ORDERINGS,
    list_orders,
    scan_order,
    step_distances,
)

GRIDS = [
    (1, 1),
    (1, 7),
    (7, 1),
    (2, 2),
    (3, 3),
    (5, 7),
    (7, 5),
    (6, 10),
    (10, 6),
    (14, 14),
    (64, 64),
]
REQUIRED = ["row_major", "column_major", "hilbert", "spiral", "diagonal", "snake"]


def manhattan_steps(order: torch.Tensor, width: int) -> torch.Tensor:
    rows, cols = order // width, order % width
    return rows.diff().abs() + cols.diff().abs()


def test_required_orders_are_registered():
    assert set(REQUIRED) <= set(ORDERINGS)
    assert list_orders() == sorted(ORDERINGS)


@pytest.mark.parametrize("height,width", GRIDS)
@pytest.mark.parametrize("name", sorted(ORDERINGS))
def test_every_order_is_a_permutation(name, height, width):
    order = scan_order(name, height, width)
    assert order.dtype == torch.long and order.shape == (height * width,)
    assert torch.equal(order.sort().values, torch.arange(height * width))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("row_major", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("column_major", [0, 3, 6, 1, 4, 7, 2, 5, 8]),
        ("spiral", [0, 1, 2, 5, 8, 7, 6, 3, 4]),
        ("diagonal", [0, 1, 3, 2, 4, 6, 5, 7, 8]),
        ("snake", [0, 1, 3, 6, 4, 2, 5, 7, 8]),
    ],
)
def test_3x3_examples(name, expected):
    assert scan_order(name, 3, 3).tolist() == expected


def test_non_square_examples():
    # column_major on 2x3: columns left to right, each top to bottom.
    assert scan_order("column_major", 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    # spiral on 2x3: clockwise, inward, from the top-left corner.
    assert scan_order("spiral", 2, 3).tolist() == [0, 1, 2, 5, 4, 3]
    # diagonal on 2x3: anti-diagonals s = r + c, each by increasing r.
    assert scan_order("diagonal", 2, 3).tolist() == [0, 1, 3, 2, 4, 5]


@pytest.mark.parametrize(
    "height,width", GRIDS + [(h, w) for h in range(1, 12) for w in (1, 2, 9, 11)]
)
def test_hilbert_is_continuous_on_any_grid(height, width):
    order = scan_order("hilbert", height, width)
    assert order[0] == 0  # starts at the top-left patch
    if order.numel() > 1:
        assert step_distances(order, width).max() == 1  # every step touches (8-neighbourhood)


@pytest.mark.parametrize("height,width", GRIDS)
@pytest.mark.parametrize("name", ["spiral", "boustrophedon"])
def test_spiral_moves_to_an_edge_neighbour(name, height, width):
    order = scan_order(name, height, width)
    if order.numel() > 1:
        assert torch.all(manhattan_steps(order, width) == 1)


@pytest.mark.parametrize("height,width", GRIDS)
def test_snake_moves_to_a_touching_patch(height, width):
    # Zig-zag steps diagonally along each anti-diagonal: touching in the 8-neighbourhood.
    order = scan_order("snake", height, width)
    if order.numel() > 1:
        assert step_distances(order, width).max() == 1


def test_row_and_column_major_jump_at_line_ends():
    # The continuity tests above would pass for anything if step_distances always returned 1.
    assert int((step_distances(scan_order("row_major", 4, 5), 5) > 1).sum()) == 3
    assert int((step_distances(scan_order("column_major", 4, 5), 5) > 1).sum()) == 4


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_hilbert_quadrant_property_on_power_of_two_grids(k):
    side = 2**k
    order = scan_order("hilbert", side, side)
    rows, cols = order // side, order % side
    for level in range(1, k + 1):
        block = 2**level
        block_id = (rows // block) * side + cols // block  # aligned block of every slot
        runs = block_id.reshape(-1, block * block)  # (blocks, block*block): one run per block
        assert torch.all(runs == runs[:, :1]), f"an aligned {block}x{block} block is split"


def classic_hilbert_d2xy(n: int, d: int) -> tuple[int, int]:
    """The textbook Hilbert curve (independent reference): distance d -> (x, y) on an n x n grid."""
    x = y = 0
    s, t = 1, d
    while s < n:
        rx = 1 & (t // 2)
        ry = 1 & (t ^ rx)
        if ry == 0:
            if rx == 1:
                x, y = s - 1 - x, s - 1 - y
            x, y = y, x
        x, y = x + s * rx, y + s * ry
        t //= 4
        s *= 2
    return x, y


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_hilbert_equals_textbook_curve_up_to_transpose(k):
    n = 2**k
    cells = [classic_hilbert_d2xy(n, d) for d in range(n * n)]
    as_xy = [y * n + x for x, y in cells]
    as_yx = [x * n + y for x, y in cells]
    assert scan_order("hilbert", n, n).tolist() in (as_xy, as_yx)


def test_unknown_order_lists_the_names():
    with pytest.raises(ValueError, match="unknown scan order 'zigzag'.*hilbert.*row_major"):
        scan_order("zigzag", 4, 4)


@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (-3, 4)])
def test_non_positive_grid_is_rejected(height, width):
    with pytest.raises(ValueError, match="should be a positive int but got -?[0-9]"):
        scan_order("row_major", height, width)


@pytest.mark.parametrize("height", [2.0, "4", True, None])
def test_non_integer_grid_is_rejected(height):
    with pytest.raises(TypeError, match="'height' should be a positive int"):
        scan_order("row_major", height, 4)


def test_cli_prints_table_and_writes_png(tmp_path, capsys):
    from diffsort_reorder.orderings import main

    main(["--height", "6", "--width", "5", "--out", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert "hilbert" in out and "(grid 6x5)" in out
    assert (tmp_path / "o.png").stat().st_size > 1000
