import pytest
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from diffsort_reorder.orderings import scan_order
from diffsort_reorder.plotting import order_image, orders_figure, save_orders_png


def test_order_image_is_a_tensorboard_ready_picture():
    img = order_image(scan_order("hilbert", 8, 8), 8, 8, title="hilbert")
    assert img.dim() == 3 and img.shape[0] == 3 and img.shape[1] > 50
    assert img.dtype == torch.float32 and 0.0 <= img.min() and img.max() <= 1.0


def test_drawings_differ_between_orders():
    a = order_image(scan_order("row_major", 6, 6), 6, 6)
    b = order_image(scan_order("spiral", 6, 6), 6, 6)
    assert (a - b).abs().mean() > 0.01


def test_save_orders_png(tmp_path):
    orders = {name: scan_order(name, 5, 7) for name in ["row_major", "hilbert", "snake"]}
    path = save_orders_png(orders, 5, 7, tmp_path / "sub" / "orders.png", columns=2)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 200


def test_not_a_permutation_is_rejected():
    with pytest.raises(ValueError, match="permutation of range\\(9\\)"):
        order_image(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7]), 3, 3)


def test_marked_patches_are_framed():
    fig = orders_figure({"a": torch.arange(16), "b": torch.arange(16).flip(0)}, 4, 4, marks=[3, 9])
    frames = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    assert sorted((f.get_x(), f.get_y()) for f in frames) == [(0.5, 1.5)] * 2 + [(2.5, -0.5)] * 2
