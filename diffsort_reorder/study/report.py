"""A study's report: ``results.csv``, ``comparison.png``, ``orders.png``, ``backbones.png`` and
``report.md``.

Rows are (protocol, backbone, method). Within one (protocol, backbone) every method ran the same
seeds, so each row carries its paired difference to ``row_major`` and to the best fixed order, with
a 95% interval (:mod:`diffsort_reorder.stats`); the headline claims a gain only where that interval
excludes zero. Every file is written to a temporary name and renamed, so a report is never
half-written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig
from optuna.trial import TrialState
from PIL import Image

from ..config import to_yaml
from ..orders.methods import is_fixed, is_per_image, kind_of
from ..plotting import orders_figure
from .search import is_interrupted
from .stats import paired_delta

METRIC_MEANINGS = {
    "val_acc": "the validation accuracy at the last epoch, with the order frozen",
    "best_val_acc": "the best validation accuracy over all epochs, the fixed-order and policy "
    "phases included",
}
COLUMNS = ["protocol", "method", "backbone", "data", "val_acc_mean", "val_acc_std", "n_seeds",
           "delta_vs_row_major", "delta_ci_low", "delta_ci_high", "significant", "best_fixed",
           "delta_vs_best_fixed", "best_fixed_ci_low", "best_fixed_ci_high",
           "significant_vs_best_fixed", "ci", "key_recall", "best_params", "train_seconds", "kind",
           "seeds", "val_accs", "trials_complete", "trials_pruned", "trials_failed"]  # fmt: skip
KIND_COLOURS = {"scan": "#8c8c8c", "prior": "#e39c37", "learned": "#3a78b5", "probe": "#6a9f58"}
BASELINE = "row_major"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def best_trial(study: optuna.Study | None) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the highest value (None without a study or a complete trial)."""
    if study is None:
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def _was_retried(trial, trials) -> bool:
    """An interrupted trial (FAIL without a reason) that a later trial ran again."""
    if not is_interrupted(trial):
        return False
    root = trial.user_attrs.get("retry_of", trial.number)
    return any(t.number > trial.number and t.user_attrs.get("retry_of") == root for t in trials)


def summarize(searches: dict, results: dict, metric: str) -> list[dict]:
    """One row per (protocol, backbone, method): its seeds' mean and std of the metric, its
    search's best params; then the paired statistics of its group."""
    rows = []
    for (protocol, backbone, method), all_runs in results.items():
        runs = [r for r in all_runs if r.ok]
        mean, std = _mean_std([r.metric(metric) for r in runs])
        search = searches.get((backbone, method))
        trials = search.get_trials(deepcopy=False) if search is not None else []
        best = best_trial(search)
        failed = [t for t in trials if t.state == TrialState.FAIL and not _was_retried(t, trials)]
        failures = [
            (f"trial {t.number}", t.user_attrs.get("fail_reason", "interrupted")) for t in failed
        ] + [(f"seed {r.seed}", r.failed) for r in all_runs if not r.ok]
        recalls = [r.key_recall for r in runs if r.key_recall is not None]
        rows.append({
            "protocol": protocol,
            "method": method,
            "backbone": backbone,
            "data": runs[0].data if runs else "",
            "val_acc_mean": mean,
            "val_acc_std": std,
            "n_seeds": len(runs),
            "key_recall": statistics.fmean(recalls) if recalls else "",
            "best_params": json.dumps(best.params if best else {}, sort_keys=True),
            "train_seconds": _mean_std([r.train_seconds for r in runs])[0],
            "kind": kind_of(method),
            "seeds": " ".join(str(r.seed) for r in runs),
            "val_accs": " ".join(f"{r.metric(metric):.4f}" for r in runs),
            "trials_complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "trials_failed": len(failed),
            "_by_seed": {r.seed: r.metric(metric) for r in runs},
            "_runs": runs,
            "_failures": failures,
        })  # fmt: skip
    for group in groups(rows).values():
        add_paired_stats(group)
    return rows


def groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows by (protocol, backbone), in study order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        out.setdefault((row["protocol"], row["backbone"]), []).append(row)
    return out


def add_paired_stats(group: list[dict]) -> None:
    """Each row's paired difference to ``row_major`` and to the best fixed order of its group."""
    ok = [r for r in group if r["n_seeds"]]
    base = next((r for r in ok if r["method"] == BASELINE), None)
    fixed = [r for r in ok if is_fixed(r["method"])]
    best_fixed = max(fixed, key=lambda r: r["val_acc_mean"]) if fixed else None
    for row in group:
        for prefix, ref in (("delta", base), ("best_fixed", best_fixed)):
            d = paired_delta(row["_by_seed"], ref["_by_seed"]) if ref else paired_delta({}, {})
            row[f"_{prefix}"] = d
        d, f = row["_delta"], row["_best_fixed"]
        row.update({
            "delta_vs_row_major": d["delta"], "delta_ci_low": d["low"],
            "delta_ci_high": d["high"], "significant": d["significant"],
            "best_fixed": best_fixed["method"] if best_fixed else "",
            "delta_vs_best_fixed": f["delta"], "best_fixed_ci_low": f["low"],
            "best_fixed_ci_high": f["high"], "significant_vs_best_fixed": f["significant"],
            "ci": d["ci"],
        })  # fmt: skip


def write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    _atomic_write(path, buffer.getvalue().encode())


def _by_delta(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: -math.inf if math.isnan(r["delta_vs_row_major"])
                  else r["delta_vs_row_major"])  # fmt: skip


def comparison_figure(rows: list[dict], title: str) -> Figure:
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
        group = [r for r in _by_delta(group) if r["n_seeds"]]
        y = list(range(len(group)))
        delta = [100 * r["delta_vs_row_major"] for r in group]
        low = [d - 100 * r["delta_ci_low"] if not math.isnan(r["delta_ci_low"]) else 0
               for d, r in zip(delta, group, strict=True)]  # fmt: skip
        high = [100 * r["delta_ci_high"] - d if not math.isnan(r["delta_ci_high"]) else 0
                for d, r in zip(delta, group, strict=True)]  # fmt: skip
        for yi, d, lo, hi, r in zip(y, delta, low, high, group, strict=True):
            ax.errorbar(d, yi, xerr=[[lo], [hi]], fmt="o", color=KIND_COLOURS[r["kind"]],
                        capsize=3, markersize=5 if r["significant"] else 3)  # fmt: skip
        ax.axvline(0, color="black", linestyle="--", linewidth=0.8)
        ax.set_yticks(y, [f"{r['method']}{' *' if r['significant'] else ''}" for r in group],
                      fontsize=7)  # fmt: skip
        ax.set_title(f"{backbone}, {protocol}", fontsize=9)
        ax.set_xlabel("val acc - row_major (points, 95% CI)", fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle(f"{title}   (* interval excludes 0)", fontsize=10)
    return fig


def backbones_figure(rows: list[dict], protocol: str) -> Figure:
    """Method x backbone heatmap of the paired difference to row_major (points)."""
    group = [r for r in rows if r["protocol"] == protocol]
    backbones = list(dict.fromkeys(r["backbone"] for r in group))
    methods = list(dict.fromkeys(r["method"] for r in group))
    cell = {(r["method"], r["backbone"]): r for r in group}
    values = [[100 * cell[m, b]["delta_vs_row_major"] if (m, b) in cell and cell[m, b]["n_seeds"]
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
                star = "*" if cell[m, b]["significant"] else ""
                ax.text(j, i, f"{values[i][j]:+.1f}{star}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(backbones)), backbones, fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    fig.colorbar(image, ax=ax, label="val acc - row_major (points)")
    ax.set_title(f"{protocol}: paired difference to row_major (* 95% CI excludes 0)", fontsize=9)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """A PNG with an adaptive 256-colour palette: a quarter of the size, small enough to commit."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    buffer = io.BytesIO()
    image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="png", optimize=True)
    _atomic_write(path, buffer.getvalue())


def final_orders(rows: list[dict]) -> tuple[dict, tuple[int, int] | None, list[int] | None]:
    """Each method's order from its first seed run (a per-image method: its first val image's),
    the grid, and that seed's key patches (planted)."""
    orders, grid, keys = {}, None, None
    for row in rows:
        if not row["_runs"]:
            continue
        run = row["_runs"][0]
        grid = grid or tuple(run.grid)
        keys = keys or run.key_patches
        if run.order is not None:
            orders[row["method"]] = run.order
        elif run.example_order is not None:
            orders[f"{row['method']} (one image)"] = run.example_order
    return orders, grid, keys


def _fmt(value, spec: str = ".3f") -> str:
    return (
        "-"
        if value == "" or (isinstance(value, float) and math.isnan(value))
        else f"{value:{spec}}"
    )


def _points(delta: dict) -> str:
    """A paired difference in points with its interval, bold when significant."""
    if math.isnan(delta["delta"]):
        return "-"
    text = f"{100 * delta['delta']:+.1f} [{_fmt(100 * delta['low'], '+.1f')}, " \
           f"{_fmt(100 * delta['high'], '+.1f')}]"  # fmt: skip
    return f"**{text}**" if delta["significant"] else text


def markdown_table(group: list[dict], metric: str) -> str:
    header = ["method", "kind", f"{metric} mean ± std", "vs row_major (pts, 95% CI)",
              "vs best fixed", "key recall", "per seed", "train s", "trials (ok/pruned/failed)",
              "best params"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in reversed(_by_delta(group)):
        trials = (
            f"{r['trials_complete']}/{r['trials_pruned']}/{r['trials_failed']}"
            if r["kind"] == "learned"
            else "-"
        )
        params = (
            ", ".join(f"`{k}={_short(v)}`" for k, v in json.loads(r["best_params"]).items()) or "-"
        )
        acc = f"{r['val_acc_mean']:.3f} ± {r['val_acc_std']:.3f}" if r["n_seeds"] else "failed"
        lines.append(
            f"| {r['method']} | {r['kind']} | {acc} | {_points(r['_delta'])} | "
            f"{_points(r['_best_fixed'])} | {_fmt(r['key_recall'], '.2f')} | "
            f"{r['val_accs'] or '-'} | {_fmt(r['train_seconds'], '.1f')} | {trials} | {params} |"
        )
    return "\n".join(lines)


def backbone_table(rows: list[dict], protocol: str) -> str:
    """Method x backbone: mean accuracy and the paired difference to row_major."""
    group = [r for r in rows if r["protocol"] == protocol]
    backbones = list(dict.fromkeys(r["backbone"] for r in group))
    cell = {(r["method"], r["backbone"]): r for r in group}
    lines = ["| method | " + " | ".join(backbones) + " |", "|---|" + "---|" * len(backbones)]
    for method in dict.fromkeys(r["method"] for r in group):
        cells = []
        for b in backbones:
            r = cell.get((method, b))
            ok = r is not None and r["n_seeds"]
            cells.append(f"{r['val_acc_mean']:.3f} ({_points(r['_delta'])})" if ok else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def headline(group: list[dict], metric: str) -> str:
    """What the group shows, claiming a gain only where the paired interval excludes 0."""
    ok = [r for r in group if r["n_seeds"]]
    base = next((r for r in ok if r["method"] == BASELINE), None)
    learned = [r for r in ok if r["kind"] == "learned"]
    if base is None or not learned:
        return "No headline: the comparison needs `row_major` and a learned method that finished."
    wins = sorted(
        (r for r in learned if r["significant"] and r["delta_vs_row_major"] > 0),
        key=lambda r: -r["delta_vs_row_major"],
    )
    best = wins[0] if wins else max(learned, key=lambda r: r["delta_vs_row_major"])
    fixed = next((r for r in ok if r["method"] == best["best_fixed"]), None)
    vs_fixed = (
        f"against the best fixed order `{fixed['method']}` ({fixed['val_acc_mean']:.3f}): "
        f"{_points(best['_best_fixed'])}"
        if fixed
        else "no fixed order to compare with"
    )
    if wins:
        names = ", ".join(f"`{r['method']}`" for r in wins)
        return (
            f"Learned orders that beat `row_major` (95% CI excludes 0): {names}. Best: "
            f"**{best['method']}**, {metric} {best['val_acc_mean']:.3f} vs "
            f"{base['val_acc_mean']:.3f}, {_points(best['_delta'])} points; {vs_fixed}."
        )
    return (
        f"No learned order beats `row_major` significantly. Closest: `{best['method']}`, "
        f"{_points(best['_delta'])} points ({best['val_acc_mean']:.3f} vs "
        f"{base['val_acc_mean']:.3f}); {vs_fixed}."
    )


def write_report(
    output_dir: Path,
    cfg: DictConfig,
    searches: dict,
    results: dict,
) -> Path:
    """Write the report files into ``output_dir``; returns the path of ``report.md``. Everything
    in it comes from the study's storage (``searches``, ``results``), so every worker of a study
    writes the same report."""
    s, metric = cfg.study, cfg.study.metric
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(searches, results, metric)
    write_csv(rows, output_dir / "results.csv")
    ok = [r for r in rows if r["n_seeds"]]
    data = ok[0]["data"] if ok else "?"
    panels = groups(rows)
    protocols = list(dict.fromkeys(p for p, _ in panels))
    backbones = list(dict.fromkeys(b for _, b in panels))
    save_figure(comparison_figure(rows, f"{s.name}: {data}"), output_dir / "comparison.png")
    figures = []
    if len(backbones) > 1:
        for protocol in protocols:
            name = f"backbones-{protocol}.png"
            save_figure(backbones_figure(rows, protocol), output_dir / name)
            figures.append(f"![method x backbone, {protocol}]({name})")
    order_figures = []
    for backbone in backbones:
        orders, grid, keys = final_orders(panels[protocols[0], backbone])
        if orders:
            name = "orders.png" if len(backbones) == 1 else f"orders-{backbone}.png"
            fig = orders_figure(orders, *grid, columns=5, marks=keys)
            save_figure(fig, output_dir / name)
            order_figures.append(f"![final orders, {backbone}]({name})")
    failures = [
        f"- `{r['method']}` ({r['backbone']}, {r['protocol']}) {where}: {why}"
        for r in rows for where, why in r["_failures"]
    ]  # fmt: skip
    code = {run.code_version for r in ok for run in r["_runs"] if run.code_version}
    runs = [r for rs in results.values() for r in rs if r.ok]
    trained = sum(r.train_seconds for r in runs)
    trained += sum(t.user_attrs.get("train_seconds", 0.0) for study in searches.values()
                   for t in study.get_trials(deepcopy=False))  # fmt: skip
    per_image = sorted({r["method"] for r in rows if is_per_image(r["method"])})
    command = " ".join(["python -m diffsort_reorder.study", *sys.argv[1:]])
    seeds = f"{s.seed + 1}..{s.seed + s.seeds}"
    lines = [
        f"# Study `{s.name}`",
        "",
        *(f"- **{b}, {p}:** {headline(g, metric)}" for (p, b), g in panels.items()),
        "",
        f"Command: `{command}`  ",
        f"Run config overrides: `{' '.join(s.overrides)}`  ",
        f"Search: {s.n_trials} Optuna trials per learned method and backbone ({s.sampler.name} "
        f"sampler, {s.pruner.name} pruner) on seed {s.seed}; then every method re-run on seeds "
        f"{seeds}, the same seeds for every method (a seed fixes the initialization, the sampling "
        f"and the batch order; the data too unless the overrides pin `data.options.seed`), so "
        f"differences are paired by seed. The numbers never include the search's own runs.  ",
        f"Protocols: {', '.join(protocols)}. *curriculum*: each seed run trains the best config "
        f"through REOrder's curriculum (fixed order, policy, frozen order). *retrain*: the order "
        f"the best search trial learned is frozen and each seed trains a fresh model on it, so "
        f"the order's own value is separated from the run's adaptation to it."
        + (
            f" Per-image methods ({', '.join(per_image)}) have no single order to freeze and keep "
            f"the curriculum under retrain."
            if per_image and "retrain" in protocols
            else ""
        )
        + "  ",  # fmt: skip
        "Intervals: 95%, of the mean per-seed difference; a Student t-interval below 10 seeds, "
        "else a percentile bootstrap (2000 resamples). **Bold**: the interval excludes 0. Each "
        "interval stands alone (no correction for the many comparisons of a table), and the best "
        "fixed order is picked on the same seeds it is compared on.  ",
        f"Metric: `{metric}`, {METRIC_MEANINGS[metric]} (the `val_acc_*` columns of results.csv "
        f"hold it). Training time: "
        f"{trained / 60:.1f} min, summed over the seed runs and the search trials that finished "
        f"(whichever worker ran them).  ",
        f"Code version: {', '.join(sorted(code)) or 'unknown'}",
        "",
    ]
    for (protocol, backbone), group in panels.items():
        lines += [f"## {backbone}, {protocol}", "", markdown_table(group, metric), ""]
    if len(backbones) > 1:
        for protocol in protocols:
            lines += [f"## Method x backbone ({protocol})", "",
                      "Mean accuracy (paired difference to row_major, points, 95% CI):", "",
                      backbone_table(rows, protocol), ""]  # fmt: skip
        lines += [*figures, ""]
    lines += [
        "![paired differences to row_major](comparison.png)",
        "",
        f"Each method's final order over the patch grid ({protocols[0]}, first seed; colour: "
        "sequence slot, red dot: the first slot, red frames: key patches where the data has "
        "them):",
        "",
        *(order_figures or ["(no orders: no run finished)"]),
        "",
        "## Failures",
        "",
        *(failures or ["None."]),
        "",
        "## Compare runs in TensorBoard",
        "",
        "```bash",
        "tensorboard --logdir runs",
        "```",
        "",
        "(From this folder. When several workers share the study, each worker's folder holds the "
        "runs it trained.)",
        "",
        f"Runs are `runs/{s.name}/<backbone>/<method>/trial-NNNN` (the search), `seed-K` and "
        "`retrain-seed-K` (the re-runs), each with its hyper-parameters and final accuracy in the "
        "HPARAMS tab.",
        "",
    ]
    path = output_dir / "report.md"
    _atomic_write(path, "\n".join(lines).encode())
    _atomic_write(output_dir / "study.yaml", to_yaml(cfg).encode())
    return path
