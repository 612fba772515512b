"""The report's pictures on hand-made run results (no training): drawn from the CSVs the report
writes, so every plotted number is the CSV's; read back as PNGs (size, panels present, none
blank); redrawn from a folder alone by ``python -m diffsort_reorder.study.figures``; the verdict
picture logged to TensorBoard."""

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffsort_reorder.config import compose_config
from diffsort_reorder.plotting import text_colour
from diffsort_reorder.run.result import RunResult
from diffsort_reorder.study.figures import main as redraw_main
from diffsort_reorder.study.report import write_report
from diffsort_reorder.study.report.figures import heatmap_figure, verdict_figure
from diffsort_reorder.study.report.tables import StudyTables, number

SEEDS = tuple(range(1, 9))  # 8: the exact sign-flip test reaches Holm over 3 learned methods
KEYS = {0: [3, 17, 21, 44], 1: [10, 31, 60, 63]}  # by task seed (seeds take them in turn)
WINDOW = 16
STUDIES = Path(__file__).resolve().parents[1] / "studies"
# Per method: test accuracy = base + gain (+ a per-seed wobble); validation = base.
GAINS = {"row_major": 0.0, "hilbert": 0.02, "oracle": 0.40, "softsort": 0.30,
         "plackett_luce": -0.01, "neuralsort": 0.05}  # fmt: skip


def order_of(method: str, seed: int) -> list[int]:
    """row_major's order, a reversal for the oracle, a seed-dependent shuffle for learned ones."""
    if method in ("row_major", "hilbert"):
        return list(range(64))
    if method == "oracle":
        return list(range(64))[::-1]
    return [int(v) for v in np.random.default_rng(seed).permutation(64)]


def result(method: str, seed: int, backbone: str, protocol: str) -> RunResult:
    wobble = 0.01 * ((seed * 7 + len(method)) % 5) + (0.01 if protocol == "retrain" else 0)
    return RunResult(
        seed=seed, method=method, backbone=backbone, data="planted", finished=True,
        test_acc=0.3 + GAINS[method] + wobble, val_acc=0.3 + GAINS[method] / 2,
        best_val_acc=0.3, train_seconds=1.0, grid=[8, 8], key_patches=KEYS[(seed - 1) % 2],
        order=order_of(method, seed),
    )  # fmt: skip


def make_study(out: Path, backbones=("txl",)) -> Path:
    cfg = compose_config(["study=smoke", f"study.output_dir={out}", f"study.seeds={len(SEEDS)}",
                          "study.task_seeds=[0,1]"], config_name="study")  # fmt: skip
    results = {
        (p, b, m): [result(m, s, b, p) for s in SEEDS]
        for p in ("curriculum", "retrain") for b in backbones for m in GAINS
    }  # fmt: skip
    windows = {b: WINDOW for b in backbones}
    write_report(out, cfg, {}, results, None, windows)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("figures") / "study")


def rows_of(folder: Path) -> dict:
    with open(folder / "results.csv") as f:
        return {(r["protocol"], r["backbone"], r["method"]): r for r in csv.DictReader(f)}


def panel_pixels(fig, ax) -> np.ndarray:
    """The pixels of ``ax`` in ``fig``'s PNG, read back (RGB, (h, w, 3))."""
    fig.canvas.draw()
    box = ax.get_window_extent()
    image = np.asarray(Image.open(__import__("io").BytesIO(png_bytes(fig))).convert("RGB"))
    height = image.shape[0]
    top, bottom = int(height - box.y1), int(height - box.y0)
    return image[max(top, 0) : bottom, int(box.x0) : int(box.x1)]


def png_bytes(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_the_verdict_picture_plots_the_csv_numbers(study):
    rows, t = rows_of(study), StudyTables.read(study)
    fig = verdict_figure(t, "test")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2  # curriculum and retrain on txl
    for ax in panels:
        backbone, protocol = ax.get_title().split(":")[0].split(", ")
        labels = [label.get_text() for label in ax.get_yticklabels()]
        learned = [m for (p, b, m), r in rows.items() if (p, b) == (protocol, backbone)
                   and r["kind"] == "learned"]  # fmt: skip
        assert sorted(labels) == sorted(learned)
        for container, method in zip(ax.containers, labels, strict=True):
            row = rows[protocol, backbone, method]
            marker, _, (bars,) = container.lines, None, container.lines[2]
            x = marker[0].get_xdata()[0]
            assert x == pytest.approx(100 * number(row["delta_vs_best_fixed"]), abs=1e-9)
            segment = bars.get_segments()[0]
            assert sorted(segment[:, 0]) == pytest.approx(
                [100 * number(row["ci_low"]), 100 * number(row["ci_high"])], abs=1e-9
            )
            filled = to_rgba(marker[0].get_markerfacecolor()) != to_rgba("white")
            assert filled == (row["significant"] == "True")
        texts = {tx.get_text() for tx in ax.texts}
        for method in learned:
            row = rows[protocol, backbone, method]
            wins = round(float(row["success_rate"]) * int(row["success_pairs"]))
            assert f"{wins}/{row['success_pairs']}" in texts
        # The oracle's line sits at its paired mean gap over the best fixed order.
        best = rows[protocol, backbone, "softsort"]["best_fixed"]
        oracle = 100 * t.paired_mean(protocol, backbone, "oracle", best)
        assert any(line.get_xdata()[0] == pytest.approx(oracle) for line in ax.lines)
    # Holm made softsort (+30 points on every seed) significant: at least one filled marker.
    assert rows["curriculum", "txl", "softsort"]["significant"] == "True"
    assert len({tuple(ax.get_xlim()) for ax in panels}) == 1  # one shared x-axis


def test_pictures_read_back_with_every_panel_drawn(study):
    for name in ("comparison.png", "orders.png", "orders-by-seed.png"):
        with Image.open(study / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    t = StudyTables.read(study)
    fig = verdict_figure(t, "test")
    for ax in (ax for ax in fig.axes if ax.get_title()):
        assert panel_pixels(fig, ax).std() > 5  # not blank
    report = (study / "report.md").read_text()
    assert "![learned orders by seed, txl](orders-by-seed.png)" in report


def test_by_seed_maps_show_each_seeds_order_and_test_accuracy(study):
    """orders-by-seed.png: a panel per seed of each learned method (their orders differ by
    seed), titled with that seed's test accuracy, curriculum then retrained."""
    from diffsort_reorder.study.report.figures import seed_panels

    t = StudyTables.read(study)
    orders, marks, titles, lines, columns = seed_panels(t, "txl")
    assert columns == len(SEEDS)
    assert len(orders) == 3 * len(SEEDS)  # softsort, plackett_luce, neuralsort
    by = {(s["protocol"], s["method"], s["seed"]): s for s in t.seeds}
    for name, order in orders.items():
        method, seed = name.split(", seed ")
        cur, ret = by["curriculum", method, seed], by["retrain", method, seed]
        accs = f"{float(cur['test_acc']):.2f} / {float(ret['test_acc']):.2f}"
        first = seed == "1"  # the row's first panel names the method
        assert titles[name] == f"{method if first else ''}\nseed {seed}: {accs}"
        assert order == [int(v) for v in cur["order"].split()]
        assert marks[name] == KEYS[(int(seed) - 1) % 2]  # that seed's own key placement


def test_heatmap_numbers_read_against_their_cells(tmp_path):
    out = make_study(tmp_path / "two", backbones=("txl", "mamba"))
    assert (out / "backbones-curriculum.png").exists()
    fig = heatmap_figure(StudyTables.read(out), "curriculum")
    ax, image = fig.axes[0], fig.axes[0].images[0]
    assert ax.texts
    for text in ax.texts:
        i, j = round(text.get_position()[1]), round(text.get_position()[0])
        cell = image.cmap(image.norm(image.get_array()[i, j]))
        assert text.get_color() == text_colour(cell)
    # softsort's cells (+30 points, the largest difference) are the darkest blue: white text.
    values = [abs(number(tx.get_text().rstrip("*"))) for tx in ax.texts]
    darkest = [tx for tx, v in zip(ax.texts, values, strict=True) if v == max(values)]
    assert darkest and all(tx.get_color() == "white" for tx in darkest)


def test_redraw_from_the_folder_alone(tmp_path, study, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(study, folder, ignore=shutil.ignore_patterns("runs", "train", "*.db"))
    for png in folder.glob("*.png"):
        png.unlink()
    report = (folder / "report.md").read_text()
    (folder / "report.md").write_text(report.replace("orders-by-seed.png", "stale.png"))
    assert redraw_main([str(folder)]) == 0
    assert (folder / "comparison.png").exists() and (folder / "orders-by-seed.png").exists()
    assert (folder / "report.md").read_text() == report
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "results.csv").write_text("protocol,method,backbone,val_acc_mean\n")
    assert redraw_main([str(previous)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "previous design" in err and "re-run" in err


@pytest.mark.parametrize(
    "name", sorted(p.parent.name for p in STUDIES.glob("*/results_by_seed.csv"))
)
def test_committed_studies_redraw_from_their_csvs(tmp_path, name):
    """Every committed study of the current design draws from its committed CSVs."""
    folder = tmp_path / name
    shutil.copytree(STUDIES / name, folder)
    assert redraw_main([str(folder)]) == 0
    with open(folder / "results_by_seed.csv") as f:
        lines = list(csv.DictReader(f))
    assert all(line["grid"] and line["order"] for line in lines)


def test_the_verdict_picture_is_in_tensorboard(study):
    logs = list((study / "runs").rglob("events.out.tfevents.*"))
    assert logs, "no TensorBoard events for the report"
    events = EventAccumulator(str(logs[0].parent), size_guidance={"images": 0})
    events.Reload()
    assert "report/comparison" in events.Tags()["images"]
    image = events.Images("report/comparison")[0]
    with Image.open(study / "comparison.png") as png:
        assert (image.width, image.height) == png.size
    assert not math.isnan(image.wall_time)
