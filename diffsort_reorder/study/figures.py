"""Redraw a study folder's pictures from its committed CSVs, without its storage and without
training: ``python -m diffsort_reorder.study.figures studies/planted-txl [...]``.

Writes ``comparison.png``, the heatmaps and the order maps (:mod:`.report.figures`) and rewrites
the ``<!-- figures -->`` block of the folder's ``report.md`` to name them. A folder of the
previous design (no per-seed table, no test split) is refused in one line.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ..files import write_text
from .report.figures import write_figures
from .report.markdown import FIGURES, figure_lines
from .report.tables import StudyTables

BLOCK = re.compile(re.escape(FIGURES[0]) + ".*?" + re.escape(FIGURES[1]), re.S)


def title_of(folder: Path, t: StudyTables) -> str:
    """``<study name>: <data>``, as the study titles its pictures."""
    config = folder / "study.yaml"
    name = OmegaConf.load(config).study.name if config.exists() else folder.name
    data = next((r["data"] for r in t.rows if r["data"]), "?")
    return f"{name}: {data}"


def redraw(folder: Path) -> list[str]:
    """Redraw ``folder``'s pictures; returns what was written."""
    t = StudyTables.read(folder)
    _, drawings = write_figures(folder, title_of(folder, t))
    report = folder / "report.md"
    written = ["comparison.png", *(line.split("(")[-1].rstrip(")") for line in drawings)]
    if report.exists():
        text = report.read_text()
        block = "\n".join(figure_lines(t.protocols(), drawings))
        if BLOCK.search(text):
            write_text(report, BLOCK.sub(lambda _: block, text))
            written.append("report.md")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffsort_reorder.study.figures",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("folders", nargs="+", help="study folders (with results.csv)")
    args = parser.parse_args(argv)
    for name in args.folders:
        try:
            written = redraw(Path(name))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{name}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
