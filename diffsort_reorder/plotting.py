"""Draw patch orders over their grid: for docs, study reports and TensorBoard.

Uses matplotlib's object API with the Agg canvas, so no display and no global pyplot state.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .files import atomic


def _check_order(order: torch.Tensor, height: int, width: int) -> np.ndarray:
    order = torch.as_tensor(order).detach().cpu().long()
    n = height * width
    if order.shape != (n,) or not torch.equal(order.sort().values, torch.arange(n)):
        raise ValueError(
            f"'order' should be a permutation of range({n}) for a {height}x{width} grid "
            f"but got shape {tuple(order.shape)}"
        )
    return order.numpy()


def plot_order(
    order: torch.Tensor,
    height: int,
    width: int,
    ax: Axes,
    title: str | None = None,
    marks: list[int] | None = None,
) -> Axes:
    """Colour each patch by its sequence slot and trace the scan through the patch centres;
    ``marks`` (row-major patch indices, e.g. planted's key patches) get a red frame."""
    order = _check_order(order, height, width)
    slot = np.empty(height * width, dtype=np.int64)
    slot[order] = np.arange(order.size)
    ax.imshow(slot.reshape(height, width), cmap="viridis", vmin=0, vmax=max(1, order.size - 1))
    rows, cols = np.divmod(order, width)
    ax.plot(cols, rows, color="white", linewidth=max(0.4, 2.0 - 0.02 * max(height, width)))
    ax.plot(cols[0], rows[0], "o", color="red", markersize=4)  # the first slot
    for r, c in (divmod(int(m), width) for m in marks or []):
        ax.add_patch(
            Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2)
        )
    if height * width <= 64:
        for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
            ax.text(c, r, str(k), ha="center", va="center", fontsize=7, color="black")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def orders_figure(
    orders: dict[str, torch.Tensor],
    height: int,
    width: int,
    columns: int = 4,
    marks: list[int] | None = None,
) -> Figure:
    """One panel per named order; ``marks`` are framed in every panel."""
    columns = max(1, min(columns, len(orders)))
    rows = math.ceil(len(orders) / columns)
    fig = Figure(figsize=(2.4 * columns, 2.5 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, order) in zip(axes, orders.items(), strict=False):
        plot_order(order, height, width, ax, title=name, marks=marks)
    for ax in axes[len(orders) :]:
        ax.set_axis_off()
    return fig


def save_orders_png(
    orders: dict[str, torch.Tensor], height: int, width: int, path: str | Path, columns: int = 4
) -> Path:
    """Write :func:`orders_figure` as a PNG, atomically; returns the path."""
    with atomic(path) as f:
        orders_figure(orders, height, width, columns).savefig(f, format="png")
    return Path(path)


def order_image(order: torch.Tensor, height: int, width: int, title: str | None = None):
    """The drawing as a float tensor ``(3, H, W)`` in [0, 1], as TensorBoard's add_image wants."""
    fig = Figure(figsize=(3, 3), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    plot_order(order, height, width, fig.add_subplot(), title=title)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float32) / 255.0  # (H, W, 4)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)
