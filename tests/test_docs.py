"""Docs from data: the results blocks of the committed README files equal what their CSVs give,
and the generator fails loudly on a block without a CSV."""

import csv
import shutil
from pathlib import Path

import pytest

from diffsort_reorder.study import docs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", docs.DEFAULT_FILES)
def test_committed_docs_agree_with_their_csvs(name):
    path = ROOT / name
    text = path.read_text()
    assert docs.BLOCK.search(text), f"{name} has no results block"
    assert docs.render(text, path.parent) == text, (
        f"{name} disagrees with its CSVs: run python -m diffsort_reorder.study.docs"
    )


def test_every_committed_study_is_in_a_results_block():
    named = {(ROOT / n).parent / m.group("folder") for n in docs.DEFAULT_FILES
             for m in docs.BLOCK.finditer((ROOT / n).read_text())}  # fmt: skip
    folders = {p.parent for p in (ROOT / "studies").glob("*/results.csv")}
    assert folders <= {f.resolve() for f in named}


def test_a_changed_csv_number_makes_the_check_fail(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "studies" / "planted-txl", tmp_path / "studies" / "planted-txl")
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- results: studies/planted-txl -->\nstale\n<!-- /results -->\nend\n")
    monkeypatch.chdir(tmp_path)
    assert docs.main(["README.md", "--check"]) == 1  # "stale" is not what the CSV gives
    assert docs.main(["README.md"]) == 0 and docs.main(["README.md", "--check"]) == 0
    rendered = doc.read_text()
    assert rendered.startswith("intro\n") and rendered.endswith("<!-- /results -->\nend\n")
    # One accuracy changed in the CSV: the committed text no longer agrees.
    path = tmp_path / "studies" / "planted-txl" / "results.csv"
    rows = list(csv.DictReader(path.open()))
    column = "test_acc_mean" if "test_acc_mean" in rows[0] else "val_acc_mean"
    rows[0][column] = f"{float(rows[0][column]) + 0.1:.4f}"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert docs.main(["README.md", "--check"]) == 1


def test_a_block_naming_a_folder_without_a_csv_is_refused(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("<!-- results: nowhere -->\n<!-- /results -->\n")
    monkeypatch.chdir(tmp_path)
    assert docs.main(["README.md", "--check"]) == 2
