"""Nothing lost, nothing silent: a run's files survive damage (a truncated checkpoint falls back to
the previous one, a damaged result is trained again), a crafted checkpoint runs no code, a
storage password never reaches a file or the terminal, and names that become folders stay plain.
"""

import logging
import pathlib
import sys

import numpy as np
import pytest
import torch
from tiny_runs import TINY, tiny

from diffsort_reorder import files
from diffsort_reorder.config import compose_config
from diffsort_reorder.files import load, write_text
from diffsort_reorder.orders.priors import cli as priors_cli
from diffsort_reorder.run import cli as train_cli
from diffsort_reorder.run.loop import train
from diffsort_reorder.run.result import RunResult
from diffsort_reorder.run.rundir import RunDir
from diffsort_reorder.study import cli as study_cli
from diffsort_reorder.study import study as study_module
from diffsort_reorder.study.report import write_report

PASSWORD = "s3cret-pw"
URL = f"postgresql+psycopg://user:{PASSWORD}@db.example:5432/study"
METHOD = "method=plackett_luce"  # a learned method: its random stream matters on resume
SAME = ("val_acc", "val_loss", "best_val_acc", "steps", "order")


class RunsCode:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def assert_same(a: RunResult, b: RunResult) -> None:
    for key in SAME:
        assert getattr(a, key) == getattr(b, key), key


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- 5. Files: a damaged file is one line and a way on, not a traceback on every re-run


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    full = train(tiny(tmp_path / "full", METHOD, "trainer.epochs=3"))
    cut = tmp_path / "cut"
    train(tiny(cut, METHOD, "trainer.epochs=3", "trainer.stop_after_epochs=2"))
    assert load(cut / "checkpoint.pt")["epoch"] == 2  # two kept: the last and the one before
    assert load(cut / "checkpoint.prev.pt")["epoch"] == 1
    truncate(cut / "checkpoint.pt")
    with caplog.at_level(logging.WARNING):
        resumed = train(tiny(cut, METHOD, "trainer.epochs=3"))
    assert_same(resumed, full)  # from epoch 1, exactly as if never interrupted
    warned = [r.getMessage() for r in caplog.records if "checkpoint.pt" in r.getMessage()]
    assert len(warned) == 1 and "truncated or damaged" in warned[0], caplog.text
    assert load(cut / "checkpoint.pt")["epoch"] == 3
    assert load(cut / "checkpoint.prev.pt")["epoch"] == 2  # the damaged file was not kept


def test_a_run_whose_checkpoints_are_all_damaged_starts_again(tmp_path, caplog):
    full = train(tiny(tmp_path / "full", METHOD))
    cut = tmp_path / "cut"
    train(tiny(cut, METHOD, "trainer.stop_after_epochs=1"))
    (cut / "checkpoint.prev.pt").write_bytes(b"")  # an empty file: a copy that failed
    truncate(cut / "checkpoint.pt")
    with caplog.at_level(logging.WARNING):
        again = train(tiny(cut, METHOD))
    assert_same(again, full)
    assert "starts again from its first epoch" in caplog.text


def test_a_damaged_result_or_record_is_a_warning_not_a_traceback(tmp_path, caplog):
    folder = RunDir(tmp_path)
    folder.write_config(compose_config([f"output_dir={tmp_path}"]), "abc1234")
    folder.write_result(RunResult(seed=1, val_acc=0.5, finished=True))
    write_text(folder.file("run.json"), '{"code_vers')  # torn
    with caplog.at_level(logging.WARNING):
        assert folder.finished_result().val_acc == 0.5  # the result itself still reads
    assert "run.json' is truncated or damaged" in caplog.text
    write_text(folder.file("result.json"), '{"seed": 1, "val_a')
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert folder.finished_result() is None  # so the run resumes, and rewrites it
    assert "result.json' is truncated or damaged" in caplog.text


@pytest.mark.parametrize("name", ["config.yaml", "run.json", "result.json"])
def test_run_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch, name):
    folder = RunDir(tmp_path)
    folder.write_config(compose_config([f"output_dir={tmp_path}"]), "v1")
    folder.write_result(RunResult(seed=1, finished=True))
    before = folder.file(name).read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        if name == "result.json":
            folder.write_result(RunResult(seed=2, finished=True))
        else:
            folder.write_config(compose_config([f"output_dir={tmp_path}", "seed=7"]), "v2")
    assert folder.file(name).read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


# --- 8. Checkpoints hold tensors and plain values; a crafted one runs nothing


def test_a_checkpoint_loads_with_torchs_weights_only_unpickler(tmp_path):
    train(tiny(tmp_path, METHOD, "trainer.stop_after_epochs=1"))
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # nothing allowlisted
    assert saved["epoch"] == 1 and isinstance(saved["config"], dict)
    assert isinstance(saved["rng"]["random"]["internal"], list)


def craft(path: pathlib.Path, marker: pathlib.Path) -> None:
    """Put a checkpoint whose unpickling creates ``marker`` at ``path``."""
    saved = load(path)
    torch.save({**saved, "payload": RunsCode(marker)}, path)


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    run_dir = tmp_path / "run"
    train(tiny(run_dir, METHOD, "trainer.stop_after_epochs=1"))
    craft(run_dir / "checkpoint.pt", marker)
    with pytest.raises(ValueError, match="not loaded, as loading it could run code"):
        train(tiny(run_dir, METHOD))
    assert not marker.exists()


def test_a_crafted_checkpoint_is_one_line_at_the_command_line(tmp_path, capsys):
    marker = tmp_path / "ran"
    run_dir = tmp_path / "run"
    train(tiny(run_dir, "trainer.stop_after_epochs=1"))
    craft(run_dir / "checkpoint.pt", marker)
    with pytest.raises(SystemExit) as stop:
        train_cli.main([*TINY, f"output_dir={run_dir}"])
    assert stop.value.code == 2 and not marker.exists()
    line = one_error_line(capsys.readouterr().err)
    assert str(run_dir / "checkpoint.pt") in line and "delete it" in line


def test_a_checkpoint_of_the_earlier_format_still_resumes_exactly(tmp_path):
    """Before, the random state held numpy's and Python's own tuples (a numpy array): such a
    checkpoint loads (numpy's array reconstruction allowed, nothing else) and resumes exactly."""
    full = train(tiny(tmp_path / "full", METHOD))
    cut = tmp_path / "cut"
    train(tiny(cut, METHOD, "trainer.stop_after_epochs=1"))
    saved = load(cut / "checkpoint.pt")
    npy, py = saved["rng"]["numpy"], saved["rng"]["random"]
    keys = npy["keys"].numpy().astype(np.uint32)
    saved["rng"]["numpy"] = ("MT19937", keys, npy["pos"], npy["has_gauss"], npy["gauss"])
    saved["rng"]["random"] = (py["version"], tuple(py["internal"]), py["gauss"])
    torch.save(saved, cut / "checkpoint.pt")
    assert_same(train(tiny(cut, METHOD)), full)


# --- 6. Passwords: hidden wherever a URL is written or printed


def two_seed_results() -> dict:
    def result(method: str, seed: int) -> RunResult:
        acc = 0.5 + 0.1 * seed + (0.05 if method == "softsort" else 0.0)
        return RunResult(seed=seed, method=method, backbone="txl", data="planted", val_acc=acc,
                         best_val_acc=acc, test_acc=acc, finished=True, grid=[4, 4],
                         order=list(range(16)), epochs=3)  # fmt: skip

    return {
        ("curriculum", "txl", m): [result(m, s) for s in (1, 2)] for m in ("row_major", "softsort")
    }


def test_a_storage_password_is_in_neither_report_nor_study_yaml(tmp_path, monkeypatch):
    out = tmp_path / "study"
    override = f"study.storage={URL}"
    monkeypatch.setattr(sys, "argv", ["diffsort-study", "study=smoke", override])
    cfg = compose_config(["study=smoke", f"study.output_dir={out}", override,
                          "study.methods=[row_major,softsort]", "study.seeds=2"],
                         config_name="study")  # fmt: skip
    assert cfg.study.storage == URL  # in memory the real URL, for connecting
    write_report(out, cfg, {}, two_seed_results())
    report, written = (out / "report.md").read_text(), (out / "study.yaml").read_text()
    assert PASSWORD not in report and PASSWORD not in written
    hidden = "postgresql+psycopg://user:***@db.example:5432/study"
    assert f"study.storage={hidden}" in report  # the command line still says where
    assert f"storage: {hidden}" in written


@pytest.mark.parametrize("port", ["1", "notaport"])  # refused; a URL SQLAlchemy cannot parse
def test_a_storage_password_is_never_printed(tmp_path, capsys, caplog, monkeypatch, port):
    monkeypatch.setattr(study_module, "train", None)  # nothing may train
    url = f"postgresql+psycopg://user:{PASSWORD}@127.0.0.1:{port}/study"
    argv = ["study=smoke", f"study.output_dir={tmp_path}", f"study.storage={url}"]
    with pytest.raises(SystemExit) as stop:
        study_cli.main(argv)
    assert stop.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'study.storage'" in line and "user:***@127.0.0.1" in line
    study_cli.main([*argv, "--cfg"])  # the composed config, printed
    printed = capsys.readouterr()
    assert "storage: postgresql+psycopg://user:***@127.0.0.1" in printed.out
    assert PASSWORD not in printed.out + printed.err + caplog.text


def test_redacted_hides_every_password_and_nothing_else():
    from diffsort_reorder.redact import redacted

    text = (f"a {URL} and 'mysql+pymysql://root:{PASSWORD}@localhost/db', "
            f"postgresql://h/db?user=u&password={PASSWORD}&sslmode=require")  # fmt: skip
    assert PASSWORD not in redacted(text)
    assert "root:***@localhost/db'" in redacted(text) and "&sslmode=require" in redacted(text)
    plain = "sqlite:////tmp/study.db http://host:8080/x postgresql://user@host/db"
    assert redacted(plain) == plain


# --- 7. Names that become folders are plain names


@pytest.mark.parametrize("name", ["../../../x", "a/b", "..", ".", "", "x y"])
def test_a_study_name_that_is_not_a_plain_name_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, name
):
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the default study.output_dir is outputs/study/${study.name}

    def no_study(self):
        raise AssertionError("a bad study.name should be refused before the study runs")

    monkeypatch.setattr(study_module.Study, "run", no_study)
    with pytest.raises(SystemExit) as stop:
        study_cli.main(["study=smoke", f"study.name='{name}'"])
    assert stop.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'study.name' should be a plain name" in line and repr(name) in line
    assert [p.name for p in tmp_path.rglob("*")] == ["work"]  # nothing written, anywhere


@pytest.mark.parametrize(
    ("command", "override", "key"),
    [(priors_cli, "prior.name=../x", "prior.name"), (train_cli, "data.name=../x", "data")],
)
def test_other_names_in_output_folders_are_refused_in_one_line(
    tmp_path, monkeypatch, capsys, command, override, key
):
    monkeypatch.chdir(tmp_path)  # default output folders: outputs/<kind>/<names>-...
    with pytest.raises(SystemExit) as stop:
        command.main([override])
    assert stop.value.code == 2
    assert key in one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())
