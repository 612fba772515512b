"""A study's report: ``results.csv``, ``comparison.png``, ``orders.png``, ``backbones.png`` and
``report.md``.

Rows (:mod:`.rows`) are (protocol, backbone, method) and report the test split. Within one
(protocol, backbone) every method ran the same seeds, so each row carries its paired differences
to the best fixed order and to ``row_major``, Holm-corrected per family (:mod:`.verdicts`); the
headline (:mod:`.markdown`) claims a gain only where the adjusted p < 0.05. ``results_by_seed.csv``
has every seed run's numbers and order, for researchers' own statistics. Every file is written
atomically (:mod:`diffsort_reorder.files`), so a report is never half-written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ...config import to_yaml
from ...files import write_text
from ...orders.methods import is_per_image
from ...redact import redacted
from ..seeds import study_seeds, task_seed_of
from .figures import log_pictures, write_figures
from .markdown import (
    METRIC_MEANINGS,
    backbone_table,
    closing_lines,
    headline,
    lr_mass_line,
    markdown_table,
    method_lines,
    placement_lines,
)
from .rows import COLUMNS, SEED_COLUMNS, Row, best_trial, csv_text, groups, seeds_csv_text
from .verdicts import summarize


def training_minutes(rows: list[Row], searches: dict) -> float:
    """Minutes of training: the seed runs' and the search trials' that finished."""
    seconds = sum(run.train_seconds for r in rows for run in r.runs)
    seconds += sum(t.user_attrs.get("train_seconds", 0.0) for study in searches.values()
                   for t in study.get_trials(deepcopy=False))  # fmt: skip
    return seconds / 60


def report_lines(cfg: DictConfig, rows: list[Row], searches: dict,
                 figures: tuple[list[str], list[str]]) -> list[str]:  # fmt: skip
    """The lines of ``report.md``."""
    s, metric = cfg.study, cfg.study.metric
    panels = groups(rows)
    protocols = list(dict.fromkeys(p for p, _ in panels))
    several = len({b for _, b in panels}) > 1
    code = {run.code_version for r in rows for run in r.runs if run.code_version}
    per_image = sorted({r.method for r in rows if is_per_image(r.method)})
    reported = ", ".join(sorted({r.reported for r in rows if r.n_seeds})) or "-"
    failures = [f"- `{r.method}` ({r.backbone}, {r.protocol}) {where}: {why}"
                for r in rows for where, why in r.failures]  # fmt: skip
    lines = [
        f"# Study `{s.name}`",
        "",
        *(f"- **{b}, {p}:** {headline(g)}" for (p, b), g in panels.items()),
        "",
        *method_lines(s, protocols, per_image),
        f"Reported: the test accuracy at the last epoch ({reported}). Search metric: `{metric}`, "
        f"{METRIC_MEANINGS[metric]} (the `val_acc_*` columns of results.csv). Training time: "
        f"{training_minutes(rows, searches):.1f} min, summed over the "
        f"seed runs and the search trials that finished (whichever worker ran them).  ",
        *lr_mass_line(rows),
        f"Code version: {', '.join(sorted(code)) or 'unknown'}",
        "",
    ]
    for (protocol, backbone), group in panels.items():
        lines += [f"## {backbone}, {protocol}", "", markdown_table(group), "",
                  *placement_lines(group, s), ""]  # fmt: skip
    if several:
        for protocol in protocols:
            lines += [f"## Method x backbone ({protocol})", "",
                      "Mean test accuracy (paired difference to row_major, points, 95% CI):", "",
                      backbone_table(rows, protocol), ""]  # fmt: skip
        lines += [*figures[0], ""]
    return lines + closing_lines(s, protocols, figures[1], failures)


def write_report(output_dir: Path, cfg: DictConfig, searches: dict, results: dict,
                 sources: dict | None = None, windows: dict | None = None) -> Path:  # fmt: skip
    """Write the report files into ``output_dir``; returns the path of ``report.md``. Everything
    in it comes from the study's storage (``searches``: each (backbone, method)'s Optuna study;
    ``results``: each (protocol, backbone, method)'s seed runs; ``sources``: the run whose order
    each of them trained on; ``windows``: each backbone's readout window), so every worker of a
    study writes the same report. The pictures are drawn from the CSVs just written, and the
    verdict picture goes to TensorBoard too (``runs/<name>/report``). A URL's password is written
    as ``***`` (:func:`~diffsort_reorder.redact.redacted`)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    s = cfg.study
    rows = summarize(searches, results, s.metric, sources)
    seeds = study_seeds(s)
    write_text(output_dir / "results.csv", csv_text(rows))
    write_text(
        output_dir / "results_by_seed.csv",
        seeds_csv_text(rows, lambda seed: task_seed_of(s.get("task_seeds"), seeds, seed), windows),
    )
    data = next((r.data for r in rows if r.n_seeds), "?")
    figures = write_figures(output_dir, f"{cfg.study.name}: {data}")
    log_pictures(output_dir / "runs" / s.name / "report", output_dir)
    # The two files users commit: a password in study.storage (or the command line) is hidden.
    lines = report_lines(cfg, rows, searches, figures)
    path = write_text(output_dir / "report.md", redacted("\n".join(lines)))
    write_text(output_dir / "study.yaml", redacted(to_yaml(cfg)))
    return path


__all__ = ["COLUMNS", "SEED_COLUMNS", "Row", "best_trial", "summarize", "write_report"]
