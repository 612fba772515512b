"""The report's figures: paired differences per (protocol, backbone) (``comparison.png``), the
method x backbone heatmap (``backbones-<protocol>.png``) and the final orders
(``orders.png``), saved as small palette PNGs."""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ...files import write_bytes
from ...plotting import orders_figure
from .rows import Row, by_delta, groups

KIND_COLOURS = {"scan": "#8c8c8c", "prior": "#e39c37", "learned": "#3a78b5", "probe": "#6a9f58",
                "oracle": "#b03a2e"}  # fmt: skip


def comparison_figure(rows: list[Row], title: str) -> Figure:
    """One panel per (protocol, backbone): each method's paired difference to row_major with its
    95% interval, best at the top, coloured by kind."""
    panels = groups(rows)
    cols = len({b for _, b in panels})
    nrows = math.ceil(len(panels) / cols)
    height = max(len(g) for g in panels.values())
    fig = Figure(figsize=(4.2 * cols, (0.28 * height + 1.0) * nrows + 0.4), dpi=100,
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, ((protocol, backbone), group) in zip(axes, panels.items(), strict=False):
        group = [r for r in by_delta(group) if r.n_seeds]
        y = list(range(len(group)))
        delta = [100 * r.delta_vs_row_major for r in group]
        low = [d - 100 * r.row_major_ci_low if not math.isnan(r.row_major_ci_low) else 0
               for d, r in zip(delta, group, strict=True)]  # fmt: skip
        high = [100 * r.row_major_ci_high - d if not math.isnan(r.row_major_ci_high) else 0
                for d, r in zip(delta, group, strict=True)]  # fmt: skip
        for yi, d, lo, hi, r in zip(y, delta, low, high, group, strict=True):
            ax.errorbar(d, yi, xerr=[[lo], [hi]], fmt="o", color=KIND_COLOURS[r.kind],
                        capsize=3, markersize=5 if r.significant_vs_row_major else 3)  # fmt: skip
        ax.axvline(0, color="black", linestyle="--", linewidth=0.8)
        labels = [f"{r.method}{' *' if r.significant_vs_row_major else ''}" for r in group]
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_title(f"{backbone}, {protocol}", fontsize=9)
        ax.set_xlabel("test acc - row_major (points, 95% CI)", fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle(f"{title}   (* Holm-adjusted p < 0.05)", fontsize=10)
    return fig


def backbones_figure(rows: list[Row], protocol: str) -> Figure:
    """Method x backbone heatmap of the paired difference to row_major (points)."""
    group = [r for r in rows if r.protocol == protocol]
    backbones = list(dict.fromkeys(r.backbone for r in group))
    methods = list(dict.fromkeys(r.method for r in group))
    cell = {(r.method, r.backbone): r for r in group}
    values = [[100 * cell[m, b].delta_vs_row_major if (m, b) in cell and cell[m, b].n_seeds
               else math.nan for b in backbones] for m in methods]  # fmt: skip
    finite = [abs(v) for row in values for v in row if not math.isnan(v)] or [1.0]
    limit = max(finite) or 1.0
    fig = Figure(figsize=(1.3 * len(backbones) + 2.6, 0.3 * len(methods) + 1.3), dpi=100,
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i, m in enumerate(methods):
        for j, b in enumerate(backbones):
            if not math.isnan(values[i][j]):
                star = "*" if cell[m, b].significant_vs_row_major else ""
                ax.text(j, i, f"{values[i][j]:+.1f}{star}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(backbones)), backbones, fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    fig.colorbar(image, ax=ax, label="test acc - row_major (points)")
    ax.set_title(f"{protocol}: paired difference to row_major (* Holm p < 0.05)", fontsize=9)
    return fig


def final_orders(rows: list[Row]) -> tuple[dict, tuple[int, int] | None, list[int] | None]:
    """Each method's order from its first seed run (a per-image method: its first val image's),
    the grid, and that seed's key patches (planted)."""
    orders, grid, keys = {}, None, None
    for row in rows:
        if not row.runs:
            continue
        run = row.runs[0]
        grid = grid or tuple(run.grid)
        keys = keys or run.key_patches
        if run.order is not None:
            orders[row.method] = run.order
        elif run.example_order is not None:
            orders[f"{row.method} (one image)"] = run.example_order
    return orders, grid, keys


def save_figure(fig: Figure, path: Path) -> None:
    """A PNG with an adaptive 256-colour palette: a quarter of the size, small enough to commit."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    buffer = io.BytesIO()
    image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="png", optimize=True)
    write_bytes(path, buffer.getvalue())


def write_figures(rows: list[Row], output_dir: Path, title: str) -> tuple[list[str], list[str]]:
    """Write every figure of ``rows`` into ``output_dir``; returns the markdown image lines of
    the heatmaps (several backbones) and of the order drawings."""
    panels = groups(rows)
    protocols = list(dict.fromkeys(p for p, _ in panels))
    backbones = list(dict.fromkeys(b for _, b in panels))
    save_figure(comparison_figure(rows, title), output_dir / "comparison.png")
    heatmaps = []
    if len(backbones) > 1:
        for protocol in protocols:
            name = f"backbones-{protocol}.png"
            save_figure(backbones_figure(rows, protocol), output_dir / name)
            heatmaps.append(f"![method x backbone, {protocol}]({name})")
    drawings = []
    for backbone in backbones:
        orders, grid, keys = final_orders(panels[protocols[0], backbone])
        if orders:
            name = "orders.png" if len(backbones) == 1 else f"orders-{backbone}.png"
            save_figure(orders_figure(orders, *grid, columns=5, marks=keys), output_dir / name)
            drawings.append(f"![final orders, {backbone}]({name})")
    return heatmaps, drawings
