"""The report's pictures, drawn from the committed tables alone (:class:`.tables.StudyTables`), so
each shows the CSV's numbers and redraws without the study's storage:

- ``comparison.png``, the verdict picture: per (protocol, backbone), each learned method's paired
  difference to the best fixed order with its interval on one x-axis shared by every panel,
  filled where Holm's adjusted p < 0.05, its success rate beside it, and the best fixed order,
  row_major and (planted) the oracle as lines;
- ``backbones-<protocol>.png``: the method x backbone heatmap of the difference to row_major;
- ``orders.png`` (``orders-<backbone>.png``): each method's order as a map of the slot each
  patch is read at, key patches framed, the window the backbone reads best dotted;
- ``orders-by-seed.png`` (``orders-by-seed-<backbone>.png``): one map per seed of each learned
  method, its test accuracy in the title: does the estimator find the same order every time?
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from ...files import write_bytes
from ...orders.methods import is_per_image, kind_of
from ...plotting import orders_figure, text_colour
from .tables import StudyTables, grid_of, ints, number, reported

KIND_COLOURS = {"scan": "#8c8c8c", "prior": "#e39c37", "learned": "#3a78b5", "probe": "#6a9f58",
                "oracle": "#b03a2e"}  # fmt: skip
REFERENCES = {  # the lines of the verdict picture: (colour, style)
    "best fixed order": ("black", "-"),
    "row_major": ("#8c8c8c", "--"),
    "oracle": (KIND_COLOURS["oracle"], "-"),
}


def learned_rows(panel: list[dict]) -> list[dict]:
    """A panel's learned rows with a difference to the best fixed order, best last (drawn at
    the top)."""
    rows = [r for r in panel if r["kind"] == "learned" and not math.isnan(number(r["ci_low"]))]
    return sorted(rows, key=lambda r: number(r["delta_vs_best_fixed"]))


def reference_lines(t: StudyTables, protocol: str, backbone: str, best: str) -> dict[str, float]:
    """Where the references sit, in points from the best fixed order (paired by seed)."""
    lines = {"best fixed order": 0.0}
    for name in ("row_major", "oracle"):
        if name != best and t.runs(protocol, backbone, name):
            lines[name] = 100 * t.paired_mean(protocol, backbone, name, best)
    return lines


def draw_verdicts(ax, t: StudyTables, protocol: str, backbone: str, panel: list[dict]) -> None:
    """One panel of the verdict picture."""
    rows, best = learned_rows(panel), panel[0]["best_fixed"]
    for name, x in reference_lines(t, protocol, backbone, best).items():
        colour, style = REFERENCES[name]
        ax.axvline(x, color=colour, linestyle=style, linewidth=1.0)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for y, r in enumerate(rows):
        delta = 100 * number(r["delta_vs_best_fixed"])
        low, high = 100 * number(r["ci_low"]), 100 * number(r["ci_high"])
        filled = r["significant"] == "True"
        ax.errorbar(delta, y, xerr=[[delta - low], [high - delta]], fmt="o", capsize=3,
                    color=KIND_COLOURS["learned"], markersize=6,
                    markerfacecolor=KIND_COLOURS["learned"] if filled else "white")  # fmt: skip
        if r["success_rate"] != "":
            wins = round(float(r["success_rate"]) * int(r["success_pairs"]))
            ax.text(1.02, y, f"{wins}/{r['success_pairs']}", transform=right, fontsize=7,
                    va="center", clip_on=False)  # fmt: skip
    ax.set_yticks(range(len(rows)), [r["method"] for r in rows], fontsize=7)
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.text(1.02, 1.0, "wins", transform=ax.transAxes, fontsize=7, va="bottom")
    ax.set_title(f"{backbone}, {protocol}: vs {best or '-'}", fontsize=9)
    if not rows:
        ax.text(0.5, 0.5, "no learned method compared", transform=ax.transAxes, ha="center")


def verdict_figure(t: StudyTables, title: str) -> Figure:
    """The verdict picture (see the module docstring)."""
    protocols, backbones = t.protocols(), t.backbones()
    panels = t.panels()
    height = max(len(learned_rows(p)) for p in panels.values())
    fig = Figure(figsize=(max(3.8 * len(backbones) + 0.6, 7.0),
                         (0.3 * height + 1.2) * len(protocols) + 1.1), dpi=100,
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(protocols), len(backbones), squeeze=False, sharex=True)
    for (protocol, backbone), panel in panels.items():
        ax = axes[protocols.index(protocol)][backbones.index(backbone)]
        draw_verdicts(ax, t, protocol, backbone, panel)
    for ax in axes[-1]:
        ax.set_xlabel("test accuracy - best fixed order (points)", fontsize=7)
    handles = [Line2D([], [], color=c, linestyle=s, label=n) for n, (c, s) in REFERENCES.items()]
    handles += [
        Line2D(
            [],
            [],
            color=KIND_COLOURS["learned"],
            marker="o",
            linestyle="",
            label=label,
            markerfacecolor=face,
        )  # fmt: skip
        for label, face in (
            ("Holm-adjusted p < 0.05", KIND_COLOURS["learned"]),
            ("not significant", "white"),
        )  # fmt: skip
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    ci = next((r["ci"] for r in t.rows if r["kind"] == "learned" and r.get("ci") != "none"), "")
    fig.suptitle(f"{title}\nlearned orders vs the best fixed order (bars: 95% CI, {ci}; wins: "
                 f"seeds its order beat it on)", fontsize=9)  # fmt: skip
    return fig


def heatmap_figure(t: StudyTables, protocol: str) -> Figure:
    """Method x backbone heatmap of the paired difference to row_major (points), each number
    written in the colour that reads against its cell."""
    group = [r for r in t.rows if r["protocol"] == protocol]
    backbones = list(dict.fromkeys(r["backbone"] for r in group))
    methods = list(dict.fromkeys(r["method"] for r in group))
    cell = {(r["method"], r["backbone"]): r for r in group}
    values = np.array([[100 * number(cell[m, b]["delta_vs_row_major"]) if (m, b) in cell
                        else math.nan for b in backbones] for m in methods])  # fmt: skip
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    fig = Figure(figsize=(1.3 * len(backbones) + 2.6, 0.3 * len(methods) + 1.3), dpi=100,
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="RdBu", vmin=-(limit or 1.0), vmax=limit or 1.0, aspect="auto")
    for (i, m), (j, b) in ((im, jb) for im in enumerate(methods) for jb in enumerate(backbones)):
        if not math.isnan(values[i, j]):
            star = "*" if cell[m, b]["significant_vs_row_major"] == "True" else ""
            colour = text_colour(image.cmap(image.norm(values[i, j])))
            ax.text(j, i, f"{values[i, j]:+.1f}{star}", ha="center", va="center", fontsize=7,
                    color=colour)  # fmt: skip
    ax.set_xticks(range(len(backbones)), backbones, fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    fig.colorbar(image, ax=ax, label="test acc - row_major (points)")
    ax.set_title(f"{protocol}: paired difference to row_major (* Holm p < 0.05)", fontsize=9)
    return fig


def keys_of(line: dict) -> list[int]:
    """A seed line's key patches (none for data without keys)."""
    return ints(line.get("key_patches") or "")


def window_of(line: dict) -> int | None:
    """The slots a seed line's backbone reads best: its readout window, or (a backbone without
    one, on data with keys) the last K slots, as ``key_recall`` counts them."""
    if line.get("readout_window"):
        return int(line["readout_window"])
    return len(keys_of(line)) or None


def order_panels(t: StudyTables, protocol: str, backbone: str) -> tuple[dict, dict, dict]:
    """Each method's order of its first seed run with one (orders, key patches and seed lines
    by panel title)."""
    orders, marks, lines = {}, {}, {}
    for row in (r for r in t.rows if (r["protocol"], r["backbone"]) == (protocol, backbone)):
        line = next((s for s in t.runs(protocol, backbone, row["method"]) if s["order"]), None)
        if line is None:
            continue
        name = f"{row['method']}{' (one image)' if is_per_image(row['method']) else ''}"
        orders[name], marks[name], lines[name] = ints(line["order"]), keys_of(line), line
    return orders, marks, lines


def seed_panels(t: StudyTables, backbone: str) -> tuple[dict, dict, dict, list[dict], int]:
    """One panel per seed of each learned method whose orders differ across seeds (orders, key
    patches and titles by panel name, the seed lines, the columns): a row per method, titled
    with each seed's test accuracy (curriculum, then retrained on that order)."""
    protocols = t.protocols()
    orders, marks, titles, lines, columns = {}, {}, {}, [], 1
    for row in (r for r in t.rows if (r["protocol"], r["backbone"]) == (protocols[0], backbone)):
        method = row["method"]
        runs = [s for s in t.runs(protocols[0], backbone, method) if s["order"]]
        if row["kind"] != "learned" or is_per_image(method) or len({s["order"] for s in runs}) < 2:
            continue
        retrain = {s["seed"]: reported(s) for s in t.runs("retrain", backbone, method)}
        for column, s in enumerate(runs):
            name = f"{method}, seed {s['seed']}"
            again = f" / {retrain[s['seed']]:.2f}" if s["seed"] in retrain else ""
            titles[name] = (
                f"{method if column == 0 else ''}\nseed {s['seed']}: {reported(s):.2f}{again}"
            )
            orders[name], marks[name] = ints(s["order"]), keys_of(s)
            lines.append(s)
        columns = max(columns, len(runs))
    return orders, marks, titles, lines, columns


def save_figure(fig: Figure, path: Path) -> None:
    """A PNG with an adaptive 256-colour palette: a quarter of the size, small enough to commit."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    buffer = io.BytesIO()
    image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="png", optimize=True)
    write_bytes(path, buffer.getvalue())


def write_figures(folder: Path, title: str) -> tuple[list[str], list[str]]:
    """Draw every picture of the study in ``folder`` from its tables; returns the markdown image
    lines of the heatmaps (several backbones) and of the order maps."""
    t = StudyTables.read(folder)
    protocols, backbones = t.protocols(), t.backbones()
    save_figure(verdict_figure(t, title), folder / "comparison.png")
    heatmaps = []
    if len(backbones) > 1:
        for protocol in protocols:
            name = f"backbones-{protocol}.png"
            save_figure(heatmap_figure(t, protocol), folder / name)
            heatmaps.append(f"![method x backbone, {protocol}]({name})")
    drawings = []
    for backbone in backbones:
        suffix = "" if len(backbones) == 1 else f"-{backbone}"
        orders, marks, lines = order_panels(t, protocols[0], backbone)
        if orders:
            first = next(iter(lines.values()))
            scans = [name for name, line in lines.items() if kind_of(line["method"]) == "scan"]
            fig = orders_figure(orders, *grid_of(first), columns=5, marks=marks,
                                window=window_of(first), traced=scans)  # fmt: skip
            save_figure(fig, folder / f"orders{suffix}.png")
            drawings.append(f"![orders as maps, {backbone}](orders{suffix}.png)")
        orders, marks, titles, lines, columns = seed_panels(t, backbone)
        if orders:
            fig = orders_figure(orders, *grid_of(lines[0]), columns=columns, marks=marks,
                                window=window_of(lines[0]), titles=titles,
                                numbers=False)  # fmt: skip
            save_figure(fig, folder / f"orders-by-seed{suffix}.png")
            drawings.append(f"![learned orders by seed, {backbone}](orders-by-seed{suffix}.png)")
    return heatmaps, drawings


def log_pictures(log_dir: Path, folder: Path) -> None:
    """The verdict picture (and the heatmaps) of ``folder`` as TensorBoard images in ``log_dir``
    (the study's ``report`` run, beside its training runs)."""
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for path in sorted(folder.glob("backbones-*.png")) + [folder / "comparison.png"]:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3)
            writer.add_image(f"report/{path.stem}", pixels, 0, dataformats="HWC")
    finally:
        writer.close()
