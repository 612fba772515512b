"""Draw patch orders as maps of where the backbone reads: for docs, study reports and TensorBoard.

Each patch is coloured by the slot it is read at (``viridis``, dark = read first), so an order is
one image whatever the grid: 64 patches or 50,176 pixels. Key patches get a red frame and the
patches in the window the backbone reads best (the last ``window`` slots) a dot, so a key in the
window reads as a framed patch with a dot. Uses matplotlib's object API with the Agg canvas, so
no display and no global pyplot state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from .files import atomic

CMAP = "viridis"  # perceptually uniform: equal slot steps look like equal colour steps
COLOURBAR_LABEL = "slot (0 = read first)"
FRAME_COLOUR = "red"
MAX_NUMBERED = 64  # slot numbers are written on the patches up to this many patches
MAX_TRACED = 48  # trace=True follows only the first slots: a longer polyline is a tangle
MIN_FRAME_PT = 5.0  # a frame is never smaller than this, so keys stay visible on huge grids
MARK_LEGEND = "red frame: key patch"
WINDOW_LEGEND = "dot: in the window the backbone reads best (last {window} slots)"


def _check_order(order: torch.Tensor, height: int, width: int) -> np.ndarray:
    order = torch.as_tensor(order).detach().cpu().long()
    n = height * width
    if order.shape != (n,) or not torch.equal(order.sort().values, torch.arange(n)):
        raise ValueError(
            f"'order' should be a permutation of range({n}) for a {height}x{width} grid "
            f"but got shape {tuple(order.shape)}"
        )
    return order.numpy()


def slot_map(order: torch.Tensor, height: int, width: int) -> np.ndarray:
    """The slot each patch is read at, ``(height, width)``: the inverse permutation of ``order``
    (``order[k]`` is the row-major patch read at slot ``k``)."""
    order = _check_order(order, height, width)
    slots = np.empty(order.size, dtype=np.int64)
    slots[order] = np.arange(order.size)
    return slots.reshape(height, width)


def text_colour(rgba) -> str:
    """``"black"`` or ``"white"``, whichever contrasts more with the background ``rgba`` (any
    matplotlib colour), by WCAG 2 relative luminance and contrast ratio."""
    channels = np.asarray(to_rgba(rgba)[:3])
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ np.array([0.2126, 0.7152, 0.0722]))
    return "white" if 1.05 / (luminance + 0.05) > (luminance + 0.05) / 0.05 else "black"


def _cell_points(ax: Axes, height: int, width: int) -> float:
    """About how many points one patch spans in ``ax`` (before layout, so an estimate)."""
    box = ax.get_position()
    fig_w, fig_h = ax.figure.get_size_inches() * 72.0
    return min(box.width * fig_w / width, box.height * fig_h / height)


def _check_marks(marks: Sequence[int] | None, n: int) -> np.ndarray:
    marks = np.asarray([] if marks is None else list(marks), dtype=np.int64)
    if marks.size and (marks.min() < 0 or marks.max() >= n):
        raise ValueError(f"'marks' should be patch indices in range({n}) but got {marks.tolist()}")
    return marks


def _frame(ax: Axes, marks: np.ndarray, width: int, cell_pt: float, side: int) -> None:
    """A red frame per marked patch, with a thin white halo so it shows on dark cells too; on
    grids too fine to see one patch the frame grows to at least ``MIN_FRAME_PT`` (and 1.5% of the
    grid side), still centred on the patch."""
    size = 1.0 if cell_pt >= MIN_FRAME_PT else max(MIN_FRAME_PT / cell_pt, 0.015 * side)
    linewidth = float(np.clip(0.08 * cell_pt * size, 0.8, 1.6))
    halo = [patheffects.withStroke(linewidth=linewidth + 1.2, foreground="white")]
    for r, c in zip(*np.divmod(marks, width), strict=True):
        frame = Rectangle(
            (c - size / 2, r - size / 2), size, size, fill=False,
            edgecolor=FRAME_COLOUR, linewidth=linewidth, zorder=4,
        )  # fmt: skip
        frame.set_path_effects(halo)
        ax.add_patch(frame)


def _dot_window(ax: Axes, order: np.ndarray, window: int, width: int, cell_pt: float) -> None:
    """One scatter of white dots with a dark edge at the centres of the last ``window`` slots
    (a window longer than the order covers all of it); dots shrink when there are so many that
    they would hide the map."""
    if window < 1:
        raise ValueError(f"'window' should be a positive number of slots but got {window}")
    window = min(window, order.size)
    rows, cols = np.divmod(order[-window:], width)
    panel_pt2 = cell_pt**2 * order.size
    diameter = min(float(np.clip(0.3 * cell_pt, 3.0, 6.0)), math.sqrt(0.2 * panel_pt2 / window))
    ax.scatter(
        cols, rows, s=max(diameter, 1.0) ** 2, c="white", edgecolors="#202020",
        linewidths=0.5, zorder=3,
    )  # fmt: skip


def _write_slots(ax: Axes, image: AxesImage, slots: np.ndarray, lift: float) -> None:
    """Each patch's slot number, black or white against its cell; ``lift`` moves the numbers up
    (in patches) to clear a dot at the centre."""
    colours = image.cmap(image.norm(slots))  # (H, W, 4)
    fontsize = 7 if slots.size > 16 else 8
    for (r, c), slot in np.ndenumerate(slots):
        ax.text(c, r - lift, str(slot), ha="center", va="center", fontsize=fontsize,
                color=text_colour(colours[r, c]), zorder=5)  # fmt: skip


def plot_order(
    order: torch.Tensor,
    height: int,
    width: int,
    ax: Axes,
    title: str | None = None,
    marks: Sequence[int] | None = None,
    window: int | None = None,
    trace: bool = False,
    numbers: bool = True,
) -> AxesImage:
    """Draw ``order`` into ``ax`` as its :func:`slot_map`; returns the image (for colour bars).

    Args:
        order: ``(height * width,)`` permutation; ``order[k]`` is the row-major patch at slot k.
        marks: row-major patch indices framed in red (e.g. planted's key patches).
        window: the last ``window`` slots, those the backbone reads best, get a dot.
        trace: draw the scan through the first ``MAX_TRACED`` slots (for scan orders).
        numbers: write the slot numbers on the patches (up to ``MAX_NUMBERED`` patches).
    """
    slots = slot_map(order, height, width)  # (H, W)
    order = _check_order(order, height, width)
    n = order.size
    image = ax.imshow(slots, cmap=CMAP, vmin=0, vmax=max(1, n - 1), interpolation="auto")
    cell_pt = _cell_points(ax, height, width)
    if trace:
        rows, cols = np.divmod(order[: min(n, MAX_TRACED)], width)
        ax.plot(cols, rows, color="white", linewidth=1.0, alpha=0.9, zorder=2)
    if window is not None:
        _dot_window(ax, order, window, width, cell_pt)
    _frame(ax, _check_marks(marks, n), width, cell_pt, max(height, width))
    if numbers and n <= MAX_NUMBERED:
        _write_slots(ax, image, slots, lift=0.27 if window is not None else 0.0)
    ax.set_xlim(-0.5, width - 0.5)  # frames larger than a patch at the edge widen nothing
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return image


def _legend(fig: Figure, marked: bool, window: int | None) -> None:
    """A caption line under the figure naming the marks it shows."""
    parts = ([MARK_LEGEND] if marked else []) + (
        [WINDOW_LEGEND.format(window=window)] if window is not None else []
    )
    if parts:  # one line when it fits, else one mark per line, wrapped to the figure
        chars = int(fig.get_figwidth() * 15)  # about 15 characters of 8 pt text per inch
        line = "     ".join(parts)
        if len(line) > chars:  # the window's size stays whole on its own line
            line = "\n".join(p if len(p) <= chars else p.replace(" (", "\n(") for p in parts)
        fig.supxlabel(line, fontsize=8)


def _marks_of(marks, name: str) -> Sequence[int] | None:
    return marks.get(name) if isinstance(marks, Mapping) else marks


def orders_figure(
    orders: dict[str, torch.Tensor],
    height: int,
    width: int,
    columns: int = 4,
    marks: Sequence[int] | Mapping[str, Sequence[int] | None] | None = None,
    window: int | None = None,
    titles: Mapping[str, str] | None = None,
    numbers: bool = True,
    traced: Sequence[str] = (),
) -> Figure:
    """One panel per named order with one shared colour bar and a caption for the marks.

    Args:
        marks: patch indices framed in every panel, or a dict from order name to its own.
        window: the last ``window`` slots get a dot, in every panel.
        titles: panel titles by order name (default: the names).
        numbers: slot numbers on the patches (small grids); without them panels are smaller.
        traced: the names of the orders whose scan is traced (see :func:`plot_order`).
    """
    columns = max(1, min(columns, len(orders)))
    rows = math.ceil(len(orders) / columns)
    panel = max(
        2.4 if numbers else 1.6, max(height, width) / 100 + 0.4
    )  # >= one pixel per patch at 100 dpi
    caption = 0.4 if marks or window is not None else 0.0
    fig = Figure(
        figsize=(panel * columns + 0.9, (panel + 0.1) * rows + caption), dpi=100,
        layout="constrained",
    )  # fmt: skip
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    image, marked = None, False
    for ax, (name, order) in zip(axes, orders.items(), strict=False):
        these = _marks_of(marks, name)
        marked = marked or bool(these is not None and len(these))
        title = (titles or {}).get(name, name)
        image = plot_order(order, height, width, ax, title=title, marks=these, window=window,
                           trace=name in traced, numbers=numbers)  # fmt: skip
    for ax in axes[len(orders) :]:
        ax.set_axis_off()
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=0.8, aspect=30)
        bar.set_label(COLOURBAR_LABEL, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    _legend(fig, marked, window)
    return fig


def save_orders_png(
    orders: dict[str, torch.Tensor],
    height: int,
    width: int,
    path: str | Path,
    columns: int = 4,
    marks: Sequence[int] | Mapping[str, Sequence[int] | None] | None = None,
    window: int | None = None,
    traced: Sequence[str] = (),
) -> Path:
    """Write :func:`orders_figure` as a PNG, atomically; returns the path."""
    fig = orders_figure(orders, height, width, columns, marks=marks, window=window, traced=traced)
    with atomic(path) as f:
        fig.savefig(f, format="png")
    return Path(path)


def order_image(
    order: torch.Tensor,
    height: int,
    width: int,
    title: str | None = None,
    marks: Sequence[int] | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """The drawing as a float tensor ``(3, H, W)`` in [0, 1], as TensorBoard's add_image wants."""
    fig = Figure(figsize=(3.6, 3.2), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = plot_order(order, height, width, ax, title=title, marks=marks, window=window)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(COLOURBAR_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    _legend(fig, bool(marks is not None and len(marks)), window)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float32) / 255.0  # (H, W, 4)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)
