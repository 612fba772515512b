"""``report.md``: the headlines, how the study ran, a table per (backbone, protocol), the
figures, the failures and how to open the runs in TensorBoard."""

from __future__ import annotations

import json
import math
import sys

from omegaconf import DictConfig

from ..stats import PairedDelta
from .rows import BASELINE, Row, by_delta

METRIC_MEANINGS = {
    "val_acc": "the validation accuracy at the last epoch, with the order frozen",
    "best_val_acc": "the best validation accuracy over all epochs, the fixed-order and policy "
    "phases included",
}


def _fmt(value, spec: str = ".3f") -> str:
    missing = value == "" or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else f"{value:{spec}}"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def points(delta: PairedDelta) -> str:
    """A paired difference in points with its interval, bold when significant."""
    if math.isnan(delta.delta):
        return "-"
    text = f"{100 * delta.delta:+.1f} [{_fmt(100 * delta.low, '+.1f')}, " \
           f"{_fmt(100 * delta.high, '+.1f')}]"  # fmt: skip
    return f"**{text}**" if delta.significant else text


def markdown_table(group: list[Row], metric: str) -> str:
    header = ["method", "kind", f"{metric} mean ± std", "vs row_major (pts, 95% CI)",
              "vs best fixed", "key recall", "per seed", "train s", "trials (ok/pruned/failed)",
              "best params"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in reversed(by_delta(group)):
        trials = (
            f"{r.trials_complete}/{r.trials_pruned}/{r.trials_failed}"
            if r.kind == "learned"
            else "-"
        )
        params = ", ".join(f"`{k}={_short(v)}`" for k, v in json.loads(r.best_params).items())
        acc = f"{r.val_acc_mean:.3f} ± {r.val_acc_std:.3f}" if r.n_seeds else "failed"
        lines.append(
            f"| {r.method} | {r.kind} | {acc} | {points(r.delta)} | "
            f"{points(r.vs_best_fixed)} | {_fmt(r.key_recall, '.2f')} | "
            f"{r.val_accs or '-'} | {_fmt(r.train_seconds, '.1f')} | {trials} | {params or '-'} |"
        )
    return "\n".join(lines)


def backbone_table(rows: list[Row], protocol: str) -> str:
    """Method x backbone: mean accuracy and the paired difference to row_major."""
    group = [r for r in rows if r.protocol == protocol]
    backbones = list(dict.fromkeys(r.backbone for r in group))
    cell = {(r.method, r.backbone): r for r in group}
    lines = ["| method | " + " | ".join(backbones) + " |", "|---|" + "---|" * len(backbones)]
    for method in dict.fromkeys(r.method for r in group):
        cells = []
        for b in backbones:
            r = cell.get((method, b))
            ok = r is not None and r.n_seeds
            cells.append(f"{r.val_acc_mean:.3f} ({points(r.delta)})" if ok else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(group: list[Row], metric: str) -> str:
    """What the group shows, claiming a gain only where the paired interval excludes 0."""
    ok = [r for r in group if r.n_seeds]
    base = next((r for r in ok if r.method == BASELINE), None)
    learned = [r for r in ok if r.kind == "learned"]
    if base is None or not learned:
        return "No headline: the comparison needs `row_major` and a learned method that finished."
    wins = sorted(
        (r for r in learned if r.significant and r.delta_vs_row_major > 0),
        key=lambda r: -r.delta_vs_row_major,
    )
    best = wins[0] if wins else max(learned, key=lambda r: r.delta_vs_row_major)
    fixed = next((r for r in ok if r.method == best.best_fixed), None)
    vs_fixed = (
        f"against the best fixed order `{fixed.method}` ({fixed.val_acc_mean:.3f}): "
        f"{points(best.vs_best_fixed)}"
        if fixed
        else "no fixed order to compare with"
    )
    if wins:
        names = ", ".join(f"`{r.method}`" for r in wins)
        return (
            f"Learned orders that beat `row_major` (95% CI excludes 0): {names}. Best: "
            f"**{best.method}**, {metric} {best.val_acc_mean:.3f} vs "
            f"{base.val_acc_mean:.3f}, {points(best.delta)} points; {vs_fixed}."
        )
    return (
        f"No learned order beats `row_major` significantly. Closest: `{best.method}`, "
        f"{points(best.delta)} points ({best.val_acc_mean:.3f} vs "
        f"{base.val_acc_mean:.3f}); {vs_fixed}."
    )


def method_lines(s: DictConfig, protocols: list[str], per_image: list[str]) -> list[str]:
    """How the study ran: the command, the search, the seeds and the protocols."""
    command = " ".join(["python -m diffsort_reorder.study", *sys.argv[1:]])
    seeds = f"{s.seed + 1}..{s.seed + s.seeds}"
    per_image_note = (
        f" Per-image methods ({', '.join(per_image)}) have no single order to freeze and keep "
        f"the curriculum under retrain."
        if per_image and "retrain" in protocols
        else ""
    )
    return [
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
        + per_image_note
        + "  ",
        "Intervals: 95%, of the mean per-seed difference; a Student t-interval below 10 seeds, "
        "else a percentile bootstrap (2000 resamples). **Bold**: the interval excludes 0. Each "
        "interval stands alone (no correction for the many comparisons of a table), and the best "
        "fixed order is picked on the same seeds it is compared on.  ",
    ]


def closing_lines(s: DictConfig, protocols: list[str], drawings: list[str],
                  failures: list[str]) -> list[str]:  # fmt: skip
    """The comparison figure, the order drawings, the failures and TensorBoard."""
    return [
        "![paired differences to row_major](comparison.png)",
        "",
        f"Each method's final order over the patch grid ({protocols[0]}, first seed; colour: "
        "sequence slot, red dot: the first slot, red frames: key patches where the data has "
        "them):",
        "",
        *(drawings or ["(no orders: no run finished)"]),
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
