import io

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from diffsort_reorder.orderings import scan_order
from diffsort_reorder.plotting import (
    COLOURBAR_LABEL,
    order_image,
    orders_figure,
    plot_order,
    save_orders_png,
    slot_map,
    text_colour,
)

NEAR_WHITE = 235  # a pixel whose three channels are all above this reads as white paper
MAX_WHITE_FRACTION = 0.2  # a panel that is more white than this hides its map
MARKS_8x8 = [3, 17, 21, 35, 44, 47]


def random_order(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def panel(height: int, width: int, order: torch.Tensor, **kwargs):
    fig = Figure(figsize=(3, 3), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    return ax, plot_order(order, height, width, ax, **kwargs)


def red_frames(ax) -> list[Rectangle]:
    red = to_rgba("red")
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor() == red]


def png_pixels(fig: Figure) -> np.ndarray:
    """The figure as its PNG would show it, ``(H, W, 3)`` uint8; drawn first so that the axes
    know their boxes."""
    fig.canvas.draw()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        assert img.size == fig.canvas.get_width_height()  # axes boxes map 1:1 onto the PNG
        return np.asarray(img.convert("RGB"))


def panel_pixels(fig: Figure, ax, pixels: np.ndarray) -> np.ndarray:
    """The pixels inside ``ax`` (spines excluded); display y grows upwards, PNG rows downwards."""
    box = ax.get_window_extent()
    top, bottom = pixels.shape[0] - int(box.y1) + 2, pixels.shape[0] - int(box.y0) - 2
    return pixels[top:bottom, int(box.x0) + 2 : int(box.x1) - 2]


def white_fraction(region: np.ndarray) -> float:
    return float((region > NEAR_WHITE).all(axis=-1).mean())


def test_order_image_is_a_tensorboard_ready_picture():
    img = order_image(scan_order("hilbert", 8, 8), 8, 8, title="hilbert")
    assert img.dim() == 3 and img.shape[0] == 3 and img.shape[1] > 50
    assert img.dtype == torch.float32 and 0.0 <= img.min() and img.max() <= 1.0


def test_drawings_differ_between_orders():
    a = order_image(scan_order("row_major", 6, 6), 6, 6)
    b = order_image(scan_order("spiral", 6, 6), 6, 6)
    assert (a - b).abs().mean() > 0.01


def test_order_image_draws_marks_and_window():
    order = scan_order("hilbert", 8, 8)
    plain = order_image(order, 8, 8)
    marked = order_image(order, 8, 8, marks=[3, 17], window=16)
    assert marked.shape[1:] == plain.shape[1:] and (marked - plain).abs().amax() > 0.5


def test_save_orders_png(tmp_path):
    orders = {name: scan_order(name, 5, 7) for name in ["row_major", "hilbert", "snake"]}
    path = save_orders_png(orders, 5, 7, tmp_path / "sub" / "orders.png", columns=2)
    with Image.open(path) as img:
        assert img.format == "PNG" and 400 < img.size[0] < 2000 and 300 < img.size[1] < 2000


def test_not_a_permutation_is_rejected():
    with pytest.raises(ValueError, match="permutation of range\\(9\\)"):
        order_image(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7]), 3, 3)
    with pytest.raises(ValueError, match="permutation of range\\(9\\)"):
        slot_map(torch.arange(8), 3, 3)


def test_bad_marks_and_window_are_rejected():
    with pytest.raises(ValueError, match="'marks' should be patch indices in range\\(16\\)"):
        panel(4, 4, torch.arange(16), marks=[2, 16])
    with pytest.raises(ValueError, match="'window' should be a positive"):
        panel(4, 4, torch.arange(16), window=0)


def test_slot_map_is_the_inverse_permutation():
    order = random_order(35, seed=3)
    slots = slot_map(order, 5, 7)
    assert slots.shape == (5, 7)
    assert np.array_equal(slots.ravel(), torch.argsort(order).numpy())  # independent inverse
    assert np.array_equal(slots.ravel()[order.numpy()], np.arange(35))  # patch order[k] at slot k


def test_panel_image_is_the_slot_map():
    order = random_order(48, seed=1)
    _, image = panel(6, 8, order)
    assert np.array_equal(np.asarray(image.get_array()), slot_map(order, 6, 8))
    assert image.get_cmap().name == "viridis" and image.get_clim() == (0, 47)


def test_orders_figure_panels_show_their_maps():
    orders = {"row_major": scan_order("row_major", 8, 8), "hilbert": scan_order("hilbert", 8, 8),
              "random": random_order(64)}  # fmt: skip
    fig = orders_figure(orders, 8, 8, columns=2, marks=MARKS_8x8, window=32)
    pixels = png_pixels(fig)
    panels = [ax for ax in fig.axes if ax.get_title() in orders]
    assert [ax.get_title() for ax in panels] == list(orders)
    for ax in panels:
        region = panel_pixels(fig, ax, pixels)
        assert region.size and region.std() > 10 and white_fraction(region) < MAX_WHITE_FRACTION


def test_one_shared_colour_bar_and_unused_axes_off():
    orders = {name: scan_order(name, 4, 4) for name in ["row_major", "snake", "spiral"]}
    fig = orders_figure(orders, 4, 4, columns=2, titles={"snake": "boustrophedon"})
    bars = [ax for ax in fig.axes if ax.get_ylabel() == COLOURBAR_LABEL]
    assert len(bars) == 1 and len(fig.axes) == 4 + 1
    assert [ax.get_title() for ax in fig.axes[:3]] == ["row_major", "boustrophedon", "spiral"]
    assert not fig.axes[3].axison and fig.axes[0].get_xticks().size == 0


@pytest.mark.parametrize("side", [32, 224])  # 1,024 tokens, and 50,176 pixels of a 224 image
def test_large_grids_draw_a_map_not_white_lines(side):
    n = side * side
    orders = {"random": random_order(n), "row_major": torch.arange(n)}
    fig = orders_figure(orders, side, side, marks=[5, n // 2, n - 7], window=32)
    pixels = png_pixels(fig)
    for ax in fig.axes[:2]:
        assert white_fraction(panel_pixels(fig, ax, pixels)) < MAX_WHITE_FRACTION
        assert not [line for line in ax.lines if len(line.get_xdata()) > 1]


def test_marked_patches_are_framed():
    fig = orders_figure({"a": torch.arange(16), "b": torch.arange(16).flip(0)}, 4, 4, marks=[3, 9])
    frames = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    assert sorted((f.get_x(), f.get_y()) for f in frames) == [(0.5, 1.5)] * 2 + [(2.5, -0.5)] * 2


def test_marks_per_panel_from_a_dict():
    orders = {"seed0": random_order(64, 0), "seed1": random_order(64, 1), "seed2": torch.arange(64)}
    marks = {"seed0": [1, 2, 3], "seed1": [60]}  # seed2 has no keys
    fig = orders_figure(orders, 8, 8, marks=marks)
    assert [len(red_frames(ax)) for ax in fig.axes[:3]] == [3, 1, 0]
    centres = [(f.get_x() + f.get_width() / 2, f.get_y() + f.get_height() / 2)
               for f in red_frames(fig.axes[0])]  # fmt: skip
    assert sorted(centres) == [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0)]  # (col, row) of 1, 2, 3


def test_frames_stay_visible_on_huge_grids():
    ax, _ = panel(224, 224, torch.arange(224 * 224), marks=[1000])
    (frame,) = red_frames(ax)
    assert frame.get_width() >= 0.015 * 224 and frame.get_linewidth() >= 0.8


def test_window_dots_the_patches_of_the_last_slots():
    order = random_order(100, seed=2)
    ax, _ = panel(10, 10, order, window=7)
    (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    rows, cols = np.divmod(order[-7:].numpy(), 10)
    assert np.array_equal(dots.get_offsets(), np.stack([cols, rows], axis=1))


def test_caption_names_only_the_marks_present():
    order = {"a": scan_order("hilbert", 8, 8)}
    both = " ".join(orders_figure(order, 8, 8, marks=[1], window=32).get_supxlabel().split())
    assert "red frame: key patch" in both and "last 32 slots" in both
    assert "red frame" not in orders_figure(order, 8, 8, window=4).get_supxlabel()
    assert "dot" not in orders_figure(order, 8, 8, marks={"a": [1]}).get_supxlabel()
    assert orders_figure(order, 8, 8, marks={"a": []}).get_supxlabel() == ""


def test_text_colour_by_wcag_contrast():
    assert text_colour("black") == "white" and text_colour((1.0, 1.0, 1.0, 1.0)) == "black"
    assert text_colour("navy") == "white" and text_colour("yellow") == "black"
    assert text_colour("#777777") == "black"  # mid grey: black contrasts 4.7, white 4.5


def test_slot_numbers_contrast_with_their_cells():
    order = scan_order("row_major", 8, 8)
    ax, _ = panel(8, 8, order)
    texts = {t.get_text(): t for t in ax.texts}
    assert sorted(texts, key=int) == [str(k) for k in range(64)]
    assert texts["0"].get_color() == "white" and texts["63"].get_color() == "black"
    assert texts["10"].get_position() == (2, 1)  # row-major patch 10 is row 1, column 2
    big, _ = panel(9, 9, random_order(81))
    assert not big.texts


@pytest.mark.parametrize(("n_side", "points"), [(4, 16), (8, 48)])
def test_trace_follows_only_the_first_slots(n_side, points):
    order = scan_order("hilbert", n_side, n_side)
    traced, _ = panel(n_side, n_side, order, trace=True)
    (line,) = [line for line in traced.lines if len(line.get_xdata()) > 1]
    rows, cols = np.divmod(order[:points].numpy(), n_side)
    assert np.array_equal(line.get_xdata(), cols) and np.array_equal(line.get_ydata(), rows)
    plain, _ = panel(n_side, n_side, order)
    assert not [line for line in plain.lines if len(line.get_xdata()) > 1]


def test_the_map_fills_its_panel_when_frames_are_larger_than_a_patch():
    """At 32x32 a key frame is drawn larger than its patch; one on the edge must not widen the
    axes beyond the grid (a white band in the panel)."""
    fig = orders_figure({"a": torch.arange(1024)}, 32, 32, marks=[3, 1023], window=32)
    ax = fig.axes[0]
    assert ax.get_xlim() == (-0.5, 31.5) and ax.get_ylim() == (31.5, -0.5)
