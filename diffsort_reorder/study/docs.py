"""Docs from data: the results tables of the README and of ``studies/README.md`` are written from
the committed CSVs, never by hand.

A block in a Markdown file::

    <!-- results: studies/planted-txl -->
    ...
    <!-- /results -->

holds the tables of that study folder's ``results.csv`` (the folder relative to the Markdown
file), and the run count and training time of its ``results_by_seed.csv``.
``python -m diffsort_reorder.study.docs [FILE ...]`` rewrites every block in place (default:
``README.md`` and ``studies/README.md``); ``--check`` changes nothing and exits 1 naming each
file whose blocks disagree with their CSVs (a test runs it on the committed docs). A folder
written before the test split (no ``test_acc_mean`` column) gets its numbers labelled as the
previous design's, from which no verdict is drawn.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from ..files import write_text
from .report.tables import number, panels, read_csv

DEFAULT_FILES = ("README.md", "studies/README.md")
BLOCK = re.compile(r"(<!-- results: (?P<folder>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
PREVIOUS = (
    "*Previous design* (validation accuracy, the search's one learned order retrained, intervals "
    "without correction; not re-run since): no verdict is drawn from these numbers."
)


def _pts(value: str) -> str:
    v = number(value)
    return "-" if math.isnan(v) else f"{100 * v:+.1f}"


def _interval(row: dict, delta: str, low: str, high: str, significant: str) -> str:
    if math.isnan(number(row[delta])):
        return "-"
    text = f"{_pts(row[delta])} [{_pts(row[low])}, {_pts(row[high])}]"
    return f"**{text}**" if row[significant] == "True" else text


def _p(row: dict) -> str:
    p, holm = number(row["p_value"]), number(row["p_holm"])
    return "-" if math.isnan(p) else f"{p:.3g} / {holm:.3g}"


def _success(row: dict) -> str:
    rate, pairs = row["success_rate"], row["success_pairs"]
    return "-" if rate == "" else f"{round(float(rate) * int(pairs))}/{pairs}"


def current_tables(rows: list[dict]) -> list[str]:
    """Per panel: test accuracy, the difference to the best fixed order (bold: Holm-adjusted
    p < 0.05), raw / adjusted p, success rate, gap to the oracle."""
    lines = []
    for (protocol, backbone), panel in panels(rows).items():
        best = panel[0]["best_fixed"] or "-"
        lines += [f"**{backbone}, {protocol}** (best fixed order, picked on validation: "
                  f"`{best}`)", "",
                  "| method | kind | test acc | vs best fixed (pts, 95% CI) | p / Holm p | "
                  "success | gap to oracle (pts) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        ranked = sorted(panel, key=lambda r: -number(r["test_acc_mean"]) if r["n_seeds"] != "0"
                        else math.inf)  # fmt: skip
        for r in ranked:
            acc = "failed" if r["n_seeds"] == "0" else f"{number(r['test_acc_mean']):.3f}"
            vs = _interval(r, "delta_vs_best_fixed", "ci_low", "ci_high", "significant")
            lines.append(f"| {r['method']} | {r['kind']} | {acc} | {vs} | {_p(r)} | "
                         f"{_success(r)} | {_pts(r['gap_to_oracle'])} |")  # fmt: skip
        lines.append("")
    return lines


def previous_tables(rows: list[dict]) -> list[str]:
    """A folder of the previous design: validation accuracy and the uncorrected interval."""
    lines = [PREVIOUS, ""]
    for (protocol, backbone), panel in panels(rows).items():
        lines += [f"**{backbone}, {protocol}**", "",
                  "| method | kind | val acc | vs row_major (pts, 95% CI, uncorrected) |",
                  "|---|---|---|---|"]  # fmt: skip
        for r in panel:
            acc = "failed" if r["n_seeds"] == "0" else f"{number(r['val_acc_mean']):.3f}"
            vs = _interval(r, "delta_vs_row_major", "delta_ci_low", "delta_ci_high",
                           "significant")  # fmt: skip
            lines.append(f"| {r['method']} | {r['kind']} | {acc} | {vs} |")
        lines.append("")
    return lines


def run_line(folder: Path) -> list[str]:
    """How many seed runs the folder's numbers rest on and their training time."""
    path = folder / "results_by_seed.csv"
    if not path.exists():
        return []
    lines = read_csv(path)
    # A run both protocols share (a fixed order's) is listed under each: count it once.
    runs = {tuple(v for k, v in line.items() if k != "protocol"): line for line in lines}
    minutes = sum(number(r["train_seconds"]) for r in runs.values()) / 60
    return [f"{len(runs)} seed runs (results_by_seed.csv, a run both protocols share counted "
            f"once), {minutes:.1f} min of training in them.", ""]  # fmt: skip


def render_block(root: Path, folder: str) -> str:
    """The generated text of a block naming ``folder`` (relative to ``root``)."""
    path = root / folder / "results.csv"
    if not path.exists():
        raise FileNotFoundError(f"a results block names {folder!r}, which has no results.csv")
    rows = read_csv(path)
    current = bool(rows) and "test_acc_mean" in rows[0]
    lines = current_tables(rows) if current else previous_tables(rows)
    return "\n".join([*lines, *run_line(root / folder)]).rstrip("\n") + "\n"


def render(text: str, root: Path) -> str:
    """``text`` with every results block rewritten from its CSVs."""
    return BLOCK.sub(lambda m: m.group(1) + "\n" + render_block(root, m.group("folder")) + "\n"
                     + m.group(4), text)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffsort_reorder.study.docs",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a diff")
    args = parser.parse_args(argv)
    stale = []
    for name in args.files:
        path = Path(name)
        text = path.read_text()
        try:
            new = render(text, path.parent)  # a block names its folder from the file's own
        except FileNotFoundError as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 2
        if new != text:
            stale.append(name)
            if not args.check:
                write_text(path, new)
    if args.check and stale:
        print(f"results blocks disagree with their CSVs in: {', '.join(stale)}; run python -m "
              f"diffsort_reorder.study.docs", file=sys.stderr)  # fmt: skip
        return 1
    for name in stale if not args.check else []:
        print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
