"""A study's report: ``results.csv``, ``comparison.png``, ``orders.png`` and ``report.md``.

Every file is written to a temporary name and renamed, so a report is never half-written.
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
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig
from optuna.trial import TrialState
from PIL import Image

from .config import to_yaml
from .methods import PROBES
from .orderings import ORDERINGS
from .plotting import orders_figure
from .priors import PRIORS

COLUMNS = ["method", "backbone", "data", "val_acc_mean", "val_acc_std", "n_seeds", "best_params",
           "train_seconds", "kind", "val_accs", "trials_complete", "trials_pruned",
           "trials_failed"]  # fmt: skip
KIND_COLOURS = {
    "scan": "#8c8c8c",
    "prior": "#e39c37",
    "learned": "#3a78b5",
    "training-free": "#6a9f58",
}


def kind_of(method: str) -> str:
    if method in ORDERINGS:
        return "scan"
    if method in PRIORS:
        return "prior"
    return "training-free" if method in PROBES else "learned"


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
    if "fail_reason" in trial.user_attrs:
        return False
    root = trial.user_attrs.get("retry_of", trial.number)
    return any(t.number > trial.number and t.user_attrs.get("retry_of") == root for t in trials)


def summarize(methods, searches, results, cfg: DictConfig) -> list[dict]:
    """One row per method: its seeds' mean and std of the metric, its search's best params."""
    metric = cfg.study.metric
    rows = []
    for method in methods:
        runs = [r for r in results.get(method, []) if "failed" not in r]
        mean, std = _mean_std([r[metric] for r in runs])
        search = searches.get(method)
        trials = search.get_trials(deepcopy=False) if search is not None else []
        best = best_trial(search)
        failed = [t for t in trials if t.state == TrialState.FAIL and not _was_retried(t, trials)]
        failures = [
            (f"trial {t.number}", t.user_attrs.get("fail_reason", "interrupted")) for t in failed
        ] + [(f"seed {r['seed']}", r["failed"]) for r in results.get(method, []) if "failed" in r]
        rows.append({
            "method": method,
            "backbone": runs[0]["backbone"] if runs else "",
            "data": runs[0]["data"] if runs else "",
            "val_acc_mean": mean,
            "val_acc_std": std,
            "n_seeds": len(runs),
            "best_params": json.dumps(best.params if best else {}, sort_keys=True),
            "train_seconds": _mean_std([r["train_seconds"] for r in runs])[0],
            "kind": kind_of(method),
            "val_accs": " ".join(f"{r[metric]:.4f}" for r in runs),
            "trials_complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "trials_failed": len(failed),
            "_runs": runs,
            "_failures": failures,
        })  # fmt: skip
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    _atomic_write(path, buffer.getvalue().encode())


def comparison_figure(rows: list[dict], title: str) -> Figure:
    """Mean metric per method with one-std error bars, best at the top, coloured by kind."""
    rows = sorted(rows, key=lambda r: -1 if r["n_seeds"] == 0 else r["val_acc_mean"])
    fig = Figure(figsize=(7, 0.35 * len(rows) + 1.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = range(len(rows))
    means = [r["val_acc_mean"] if r["n_seeds"] else 0.0 for r in rows]
    ax.barh(y, means, xerr=[r["val_acc_std"] if r["n_seeds"] else 0.0 for r in rows],
            color=[KIND_COLOURS[r["kind"]] for r in rows], capsize=3)  # fmt: skip
    ax.set_yticks(list(y), [f"{r['method']} (n={r['n_seeds']})" for r in rows], fontsize=8)
    baseline = next((r for r in rows if r["method"] == "row_major" and r["n_seeds"]), None)
    if baseline is not None:
        ax.axvline(baseline["val_acc_mean"], color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("validation accuracy (mean and std over seeds; dashed: row_major)")
    ax.set_title(title, fontsize=10)
    handles = [ax.bar(0, 0, color=c, label=k) for k, c in KIND_COLOURS.items()
               if any(r["kind"] == k for r in rows)]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """A PNG with an adaptive 256-colour palette: a quarter of the size, small enough to commit."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    buffer = io.BytesIO()
    image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="png", optimize=True)
    _atomic_write(path, buffer.getvalue())


def final_orders(rows: list[dict]) -> tuple[dict[str, torch.Tensor], tuple[int, int] | None]:
    """Each method's order from its first seed run (a per-image method: its first val image's)."""
    orders, grid = {}, None
    for row in rows:
        if not row["_runs"]:
            continue
        run = row["_runs"][0]
        grid = grid or tuple(run["grid"])
        if run.get("order") is not None:
            orders[row["method"]] = torch.tensor(run["order"])
        elif run.get("example_order") is not None:
            orders[f"{row['method']} (one image)"] = torch.tensor(run["example_order"])
    return orders, grid


def markdown_table(rows: list[dict], metric: str) -> str:
    header = ["method", "kind", f"{metric} mean", "std", "seeds", "per seed", "train s",
              "trials (ok/pruned/failed)", "best params"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(
        rows, key=lambda r: -1 if r["n_seeds"] == 0 else r["val_acc_mean"], reverse=True
    ):
        trials = (
            f"{r['trials_complete']}/{r['trials_pruned']}/{r['trials_failed']}"
            if r["kind"] == "learned"
            else "-"
        )
        params = (
            ", ".join(f"`{k}={_short(v)}`" for k, v in json.loads(r["best_params"]).items()) or "-"
        )
        mean = f"{r['val_acc_mean']:.3f}" if r["n_seeds"] else "failed"
        std = f"{r['val_acc_std']:.3f}" if r["n_seeds"] else "-"
        train_s = f"{r['train_seconds']:.1f}" if r["n_seeds"] else "-"
        lines.append(f"| {r['method']} | {r['kind']} | {mean} | {std} | {r['n_seeds']} | "
                     f"{r['val_accs'] or '-'} | {train_s} | {trials} | {params} |")  # fmt: skip
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def headline(rows: list[dict], metric: str) -> str:
    ok = [r for r in rows if r["n_seeds"]]
    base = next((r for r in ok if r["method"] == "row_major"), None)
    learned = [r for r in ok if r["kind"] == "learned"]
    if base is None or not learned:
        return "No headline: the study needs `row_major` and a learned method that finished."
    best = max(learned, key=lambda r: r["val_acc_mean"])
    gap = 100 * (best["val_acc_mean"] - base["val_acc_mean"])
    best_fixed = max((r for r in ok if r["kind"] != "learned"), key=lambda r: r["val_acc_mean"])
    return (
        f"Best learned estimator: **{best['method']}**, {metric} {best['val_acc_mean']:.3f} "
        f"± {best['val_acc_std']:.3f} over {best['n_seeds']} seeds, **{gap:+.1f} points** over "
        f"`row_major` ({base['val_acc_mean']:.3f} ± {base['val_acc_std']:.3f}). Best fixed order: "
        f"`{best_fixed['method']}` ({best_fixed['val_acc_mean']:.3f})."
    )


def write_report(
    output_dir: Path,
    cfg: DictConfig,
    methods: list[str],
    searches: dict[str, optuna.Study],
    results: dict[str, list[dict]],
    wall_seconds: float,
) -> Path:
    """Write the four report files into ``output_dir``; returns the path of ``report.md``."""
    s, metric = cfg.study, cfg.study.metric
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(methods, searches, results, cfg)
    write_csv(rows, output_dir / "results.csv")
    ok = [r for r in rows if r["n_seeds"]]
    title = f"{s.name}: {ok[0]['data']} / {ok[0]['backbone']}" if ok else s.name
    save_figure(comparison_figure(rows, title), output_dir / "comparison.png")
    orders, grid = final_orders(rows)
    if orders:
        save_figure(orders_figure(orders, *grid, columns=5), output_dir / "orders.png")
    failures = [f"- `{r['method']}` {where}: {why}" for r in rows for where, why in r["_failures"]]
    code = {json.loads((Path(r["_runs"][0]["output_dir"]) / "run.json").read_text())["code_version"]
            for r in ok if (Path(r["_runs"][0]["output_dir"]) / "run.json").exists()}  # fmt: skip
    command = " ".join(["python -m diffsort_reorder.study", *sys.argv[1:]])
    lines = [
        f"# Study `{s.name}`",
        "",
        headline(rows, metric),
        "",
        f"Command: `{command}`  ",
        f"Run config overrides: `{' '.join(s.overrides)}`  ",
        f"Search: {s.n_trials} Optuna trials per learned method ({s.sampler.name} sampler, "
        f"{s.pruner.name} pruner) on seed {s.seed}; each method's best config then re-run with "
        f"seeds {s.seed + 1}..{s.seed + s.seeds} (the data, init and sampling all change with the "
        f"seed; the reported numbers never include the search's own runs).  ",
        f"Metric: `{metric}` at the last epoch, with the order frozen. Wall time: "
        f"{wall_seconds / 60:.1f} min (this invocation; runs already done are reused).  ",
        f"Code version: {', '.join(sorted(code)) or 'unknown'}",
        "",
        markdown_table(rows, metric),
        "",
        "![accuracy per method](comparison.png)",
        "",
        "Each method's final order over the patch grid (first seed; colour: sequence slot, "
        "red dot: the first slot):",
        "",
        "![final orders](orders.png)" if orders else "(no orders: no run finished)",
        "",
        "## Failures",
        "",
        *(failures or ["None."]),
        "",
        "## Compare runs in TensorBoard",
        "",
        "```bash",
        f"tensorboard --logdir {output_dir / 'runs'}",
        "```",
        "",
        f"Runs are `runs/{s.name}/<method>/trial-NNNN` (the search) and `seed-K` (the re-runs), "
        "each with its hyper-parameters and final accuracy in the HPARAMS tab.",
        "",
    ]
    path = output_dir / "report.md"
    _atomic_write(path, "\n".join(lines).encode())
    _atomic_write(output_dir / "study.yaml", to_yaml(cfg).encode())
    return path
