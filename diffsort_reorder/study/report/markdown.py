"""``report.md``: the headlines, how the study ran, a table per (backbone, protocol), the
figures, the failures and how to open the runs in TensorBoard."""

from __future__ import annotations

import json
import math
import statistics
import sys

from omegaconf import DictConfig

from ..seeds import study_seeds, task_seed_of
from ..stats import EQUIVALENCE_MARGIN as MARGIN
from ..stats import INTERVAL, PairedDelta, beats
from .rows import CONVERGED, Row
from .verdicts import ALPHA

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
    """A paired difference in points with its interval, bold when significant after Holm."""
    if math.isnan(delta.delta):
        return "-"
    text = f"{100 * delta.delta:+.1f} [{_fmt(100 * delta.low, '+.1f')}, " \
           f"{_fmt(100 * delta.high, '+.1f')}]"  # fmt: skip
    return f"**{text}**" if delta.significant else text


def p_text(delta: PairedDelta) -> str:
    """``p (Holm-adjusted p)``."""
    if math.isnan(delta.p_value):
        return "-"
    return f"{delta.p_value:.3g}, Holm {_fmt(delta.p_holm, '.3g')}"


def _rate(row: Row) -> str:
    if row.success_rate == "":
        return "-"
    return f"{round(row.success_rate * row.success_pairs)}/{row.success_pairs}"


def markdown_table(group: list[Row]) -> str:
    header = ["method", "kind", "test acc mean ± std", "vs best fixed (pts, 95% CI)",
              "p, Holm-adjusted", "success", "vs row_major", "gap to oracle", "key recall",
              "marginal error", "per seed", "train s", "trials (ok/pruned/failed)",
              "best params"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(group, key=lambda r: -r.test_acc_mean if r.n_seeds else math.inf):
        trials = (
            f"{r.trials_complete}/{r.trials_pruned}/{r.trials_failed}"
            if r.kind == "learned"
            else "-"
        )
        params = ", ".join(f"`{k}={_short(v)}`" for k, v in json.loads(r.best_params).items())
        acc = f"{r.test_acc_mean:.3f} ± {r.test_acc_std:.3f}" if r.n_seeds else "failed"
        error = _fmt(r.marginal_error, ".3f")
        if r.converged is False:
            error += " (not converged)"
        lines.append(
            f"| {r.method} | {r.kind} | {acc} | {points(r.vs_best_fixed)} | "
            f"{p_text(r.vs_best_fixed)} | {_rate(r)} | {points(r.vs_row_major)} | "
            f"{_fmt(100 * r.gap_to_oracle, '+.1f')} | {_fmt(r.key_recall, '.2f')} | {error} | "
            f"{r.test_accs or '-'} | {_fmt(r.train_seconds, '.1f')} | {trials} | "
            f"{params or '-'} |"
        )
    return "\n".join(lines)


def backbone_table(rows: list[Row], protocol: str) -> str:
    """Method x backbone: mean test accuracy and the paired difference to row_major."""
    group = [r for r in rows if r.protocol == protocol]
    backbones = list(dict.fromkeys(r.backbone for r in group))
    cell = {(r.method, r.backbone): r for r in group}
    lines = ["| method | " + " | ".join(backbones) + " |", "|---|" + "---|" * len(backbones)]
    for method in dict.fromkeys(r.method for r in group):
        cells = []
        for b in backbones:
            r = cell.get((method, b))
            ok = r is not None and r.n_seeds
            cells.append(f"{r.test_acc_mean:.3f} ({points(r.vs_row_major)})" if ok else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(group: list[Row]) -> str:
    """What the panel shows: a learned order beats (or loses to) the best fixed order only where
    its Holm-adjusted p < 0.05, matches it only where the equivalence test says so, and a
    non-significant difference is reported with the smallest effect the family could detect."""
    ok = [r for r in group if r.n_seeds]
    learned = [r for r in ok if r.kind == "learned"]
    best = next((r for r in ok if r.method == (ok[0].best_fixed if ok else "")), None)
    if best is None or not learned:
        return "No headline: the comparison needs a fixed order and a learned method that finished."
    parts = [f"best fixed order (picked on validation) `{best.method}`, test "
             f"{best.test_acc_mean:.3f}."]  # fmt: skip
    wins = sorted((r for r in learned if beats(r.vs_best_fixed)),
                  key=lambda r: (r.p_holm, -r.delta_vs_best_fixed))  # fmt: skip
    losses = [r for r in learned if r.significant and r.delta_vs_best_fixed < 0]
    same = [r for r in learned if r.p_equivalent < ALPHA]
    named = lambda rs: ", ".join(f"`{r.method}` {points(r.vs_best_fixed)}" for r in rs)  # noqa: E731
    if wins:
        parts.append(f"Beat it (Holm-adjusted p < 0.05): {named(wins)}.")
    else:
        top = max(learned, key=lambda r: r.delta_vs_best_fixed)
        mde = min((r.mde for r in learned), default=math.inf)
        power = (
            f"the smallest effect this panel detects with 80% power is {100 * mde:.1f} points"
            if math.isfinite(mde)
            else f"at {len(top.by_seed)} seeds its corrected test cannot reach p < 0.05 at all"
        )
        parts.append(
            f"No learned order beats it after Holm's correction over {len(learned)} methods; "
            f"the closest, `{top.method}`, {points(top.vs_best_fixed)} points (p "
            f"{p_text(top.vs_best_fixed)}). Not an absence of effect: {power}."
        )
    if losses:
        parts.append(f"Worse than it: {named(losses)}.")
    if same:
        parts.append(f"Equivalent to it within ±{100 * MARGIN:.0f} points (TOST): "
                     f"{', '.join(f'`{r.method}`' for r in same)}.")  # fmt: skip
    rates = ", ".join(f"{r.method} {_rate(r)}" for r in learned)
    parts.append(f"Seeds whose learned order beat it on test: {rates}.")
    gaps = [r for r in learned if not math.isnan(r.gap_to_oracle)]
    if gaps:
        closest = max(gaps, key=lambda r: r.gap_to_oracle)
        parts.append(f"Closest to the oracle: `{closest.method}`, "
                     f"{100 * closest.gap_to_oracle:+.1f} points.")  # fmt: skip
    loose = [f"`{r.method}` ({r.marginal_error:.2f})" for r in learned if r.converged is False]
    if loose:
        parts.append(f"Not converged (Sinkhorn marginal error above {CONVERGED} at the final "
                     f"tau): {', '.join(loose)}.")  # fmt: skip
    return " ".join(parts)


def lr_mass_line(rows: list[Row]) -> list[str]:
    """The learning-rate mass per curriculum phase, as the first finished run recorded it."""
    mass = next((run.lr_mass for r in rows for run in r.runs if run.lr_mass), None)
    if not mass:
        return []
    shares = ", ".join(f"{phase} {100 * share:.0f}%" for phase, share in mass.items())
    return [f"Learning-rate mass per curriculum phase (the model's): {shares}.  "]


def placement_lines(group: list[Row], s: DictConfig) -> list[str]:
    """Planted data with several key placements (``study.task_seeds``): each method's mean test
    accuracy per placement, beside the pooled mean of the table above."""
    tasks = list(s.get("task_seeds") or [])
    if len(tasks) < 2:
        return []
    seeds = study_seeds(s)
    header = ["method", *(f"task {t}" for t in tasks), "pooled"]
    lines = ["Per key placement (mean test accuracy over its seeds):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for r in group:
        if not r.n_seeds:
            continue
        cells = []
        for t in tasks:
            values = [v for seed, v in r.by_seed.items()
                      if task_seed_of(tasks, seeds, seed) == t]  # fmt: skip
            cells.append(f"{statistics.fmean(values):.3f}" if values else "-")
        lines.append(f"| {r.method} | " + " | ".join(cells) + f" | {r.test_acc_mean:.3f} |")
    return lines


def method_lines(s: DictConfig, protocols: list[str], per_image: list[str]) -> list[str]:
    """How the study ran: the command, the search, the seeds, the protocols and the tests."""
    command = " ".join(["python -m diffsort_reorder.study", *sys.argv[1:]])
    seeds = f"{s.seed + 1}..{s.seed + s.seeds}"
    per_image_note = (
        f" Per-image methods ({', '.join(per_image)}) have no single order to freeze and keep "
        f"the curriculum under retrain."
        if per_image and "retrain" in protocols
        else ""
    )
    tasks = s.get("task_seeds")
    placements = (
        f" Planted keys: task seeds {list(tasks)}, in turn over the seeds (one key placement "
        f"per seed, the same for every method)."
        if tasks
        else ""
    )
    return [
        f"Command: `{command}`  ",
        f"Run config overrides: `{' '.join(s.overrides)}`  ",
        f"Search: {s.n_trials} Optuna trials per learned method and backbone ({s.sampler.name} "
        f"sampler, {s.pruner.name} pruner) on seed {s.seed}, selected on the validation split. "
        f"Then the whole pipeline is replicated on seeds {seeds}, the same for every method (a "
        f"seed fixes the initialization, the sampling, the batch order and the images), so "
        f"differences pair by seed.{placements} Every reported number reads the test split, "
        f"which no search, pruner or selection read.  ",
        f"Protocols: {', '.join(protocols)}. *curriculum*: each seed trains the best config "
        f"through REOrder's curriculum (fixed order, policy, frozen order) and learns its own "
        f"order. *retrain*: a fresh model is trained on the order that seed learned, so the "
        f"order's own value is separated from the run's adaptation to it; the interval covers "
        f"the estimator's variation across seeds, not one order's." + per_image_note + "  ",
        f"Tests: paired by seed; p from an exact sign-flip permutation test, Holm-adjusted within "
        f"each panel's family (the learned methods against the best fixed order, picked on "
        f"validation; every method against row_major). **Bold**: adjusted p < 0.05. 95% "
        f"intervals: {INTERVAL}. *Equivalent*: both one-sided tests of a difference beyond "
        f"±{100 * MARGIN:.0f} points reject (TOST, p < 0.05). *success*: the seeds whose "
        f"learned order beat the best fixed order on test.  ",
    ]


FIGURES = "<!-- figures -->", "<!-- /figures -->"  # the block the pictures' lines live in


def figure_lines(protocols: list[str], drawings: list[str]) -> list[str]:
    """The verdict picture and the order maps, between :data:`FIGURES` (which
    ``python -m diffsort_reorder.study.figures`` rewrites when it redraws them)."""
    return [
        FIGURES[0],
        "Each learned method against the best fixed order (filled: Holm-adjusted p < 0.05; "
        "lines: the best fixed order, row_major and, on planted data, the oracle; wins: the "
        "seeds on which its own order beat the best fixed order):",
        "",
        "![learned orders against the best fixed order](comparison.png)",
        "",
        f"Orders as maps ({protocols[0]}): colour is the slot a patch is read at (0 first); red "
        "frames mark key patches where the data has them, dots the patches in the window the "
        "backbone reads best. The first map per method is its first seed's; the by-seed maps show "
        "every seed's learned order, titled with that seed's test accuracy (curriculum / "
        "retrained on that order):",
        "",
        *([line for d in drawings for line in (d, "")][:-1] or ["(no orders: no run finished)"]),
        FIGURES[1],
    ]


def closing_lines(s: DictConfig, protocols: list[str], drawings: list[str],
                  failures: list[str]) -> list[str]:  # fmt: skip
    """The pictures, the failures and TensorBoard."""
    return [
        *figure_lines(protocols, drawings),
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
