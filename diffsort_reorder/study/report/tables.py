"""A study folder's committed tables read back: ``results.csv`` (a line per (protocol, backbone,
method)) and ``results_by_seed.csv`` (a line per seed run). The figures and the docs are drawn
from these files alone, so every picture shows the CSV's numbers and redraws without the study's
storage (``python -m diffsort_reorder.study.figures``)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


def number(text: str) -> float:
    """A CSV cell as a float (NaN for an empty cell)."""
    return float(text) if text not in ("", "nan") else math.nan


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def panels(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Lines by (protocol, backbone), in file order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        out.setdefault((row["protocol"], row["backbone"]), []).append(row)
    return out


@dataclass
class StudyTables:
    """``rows``: results.csv's lines; ``seeds``: results_by_seed.csv's."""

    folder: Path
    rows: list[dict]
    seeds: list[dict]

    @classmethod
    def read(cls, folder: str | Path) -> StudyTables:
        """The tables of ``folder``; a ValueError in one line if it has none, or has the
        previous design's (no test split, no per-seed table), which cannot be drawn."""
        folder = Path(folder)
        results, by_seed = folder / "results.csv", folder / "results_by_seed.csv"
        if not results.exists():
            raise ValueError(f"'folder' {str(folder)!r} has no results.csv")
        rows = read_csv(results)
        if not by_seed.exists() or (rows and "test_acc_mean" not in rows[0]):
            raise ValueError(
                f"'folder' {str(folder)!r} holds a study of the previous design (no "
                f"results_by_seed.csv or test split): re-run the study to draw it"
            )
        return cls(folder, rows, read_csv(by_seed))

    def panels(self) -> dict[tuple[str, str], list[dict]]:
        return panels(self.rows)

    def protocols(self) -> list[str]:
        return list(dict.fromkeys(row["protocol"] for row in self.rows))

    def backbones(self) -> list[str]:
        return list(dict.fromkeys(row["backbone"] for row in self.rows))

    def runs(self, protocol: str, backbone: str, method: str) -> list[dict]:
        """The seed lines of one row, by seed."""
        lines = [s for s in self.seeds if (s["protocol"], s["backbone"], s["method"])
                 == (protocol, backbone, method)]  # fmt: skip
        return sorted(lines, key=lambda s: int(s["seed"]))

    def paired_mean(self, protocol: str, backbone: str, method: str, reference: str) -> float:
        """The mean over shared seeds of ``method``'s reported metric (test accuracy, or
        validation accuracy where the data has no test split) minus ``reference``'s (NaN when
        they share none)."""
        ours = {s["seed"]: reported(s) for s in self.runs(protocol, backbone, method)}
        theirs = {s["seed"]: reported(s) for s in self.runs(protocol, backbone, reference)}
        shared = [k for k in ours if k in theirs]
        return sum(ours[k] - theirs[k] for k in shared) / len(shared) if shared else math.nan


def reported(line: dict) -> float:
    """A seed line's reported accuracy: its test accuracy, or its validation accuracy where the
    data has no test split."""
    return number(line["test_acc"]) if line["test_acc"] else number(line["val_acc"])


def grid_of(line: dict) -> tuple[int, int]:
    """A seed line's patch grid ``(rows, columns)``: its ``grid`` cell ("8x8"), or a square
    grid from the length of its order."""
    if line.get("grid"):
        height, width = line["grid"].split("x")
        return int(height), int(width)
    side = math.isqrt(len(line["order"].split()))
    return side, side


def ints(text: str) -> list[int]:
    """A space-separated list of ints (an order, key patches)."""
    return [int(v) for v in text.split()]
