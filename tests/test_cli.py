"""The command lines: bad input ends in one line (``error: ...``, exit status 2, no traceback),
``--help`` and ``--cfg`` answer without running, and the default run folder is one per config."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import TINY

from diffsort_reorder.backbones import list_backbones
from diffsort_reorder.cli import EXIT_BAD_INPUT, FULL_ERROR
from diffsort_reorder.config import compose_config
from diffsort_reorder.orders.priors.cli import main as priors_main
from diffsort_reorder.run import cli as train_cli
from diffsort_reorder.run import loop as train_loop
from diffsort_reorder.study import cli as study_cli
from diffsort_reorder.study import study as study_module

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"train": train_cli.main, "study": study_cli.main, "priors": priors_main}
ESTIMATOR = ["method=softsort", "trainer.epochs=8"]  # its curriculum: 2 fixed + 6 policy epochs

CASES = [
    # (command, overrides, a regular expression the one error line must match)
    ("train", ["method=zigzag"], r"unknown method 'zigzag'; available methods: .*row_major"),
    ("train", ["backbone=rnn"], r"backbone=rnn: no such backbone config; choose one of: local, "),
    ("train", ["data=mnist"], r"data=mnist: no such data config; choose one of: cifar10, "),
    ("train", ["estimator=adam"], r"estimator=adam: no such estimator config; choose one of: "),
    ("train", ["trainer=fast"], r"trainer=fast: no such trainer config; choose one of: debug, "),
    ("priors", ["prior=entropy"], r"prior=entropy: no such prior config; choose one of: collap"),
    ("study", ["study=huge"], r"study=huge: no such study config; choose one of: backbones, "),
    ("train", ["trainer.lr=abc"], r"'trainer.lr' should be a number > 0 but got 'abc'"),
    ("train", ["trainer.lr=0"], r"'trainer.lr' should be a number > 0 but got 0"),
    ("train", ["trainer.epochs=0"], r"'trainer.epochs' should be an integer >= 1 but got 0"),
    ("train", ["trainer.epochs=2.5"], r"'trainer.epochs' should be an integer >= 1 but got 2.5"),
    ("train", ["trainer.batch_size=0"], r"'trainer.batch_size' should be an integer >= 1 but"),
    ("train", ["trainer.eval_batch_size=-4"], r"'trainer.eval_batch_size' should be an integer "),
    ("train", ["trainer.epochs=2", "trainer.warmup_epochs=3"],
     r"'trainer.warmup_epochs' should be at most trainer.epochs \(2\) but got 3"),
    ("train", ["method=softsort", "trainer.epochs=4"],
     r"'trainer.curriculum' needs fixed_epochs \+ policy_epochs <= trainer.epochs \(4\) but got "
     r"2 \+ 6"),
    ("train", ["trainer.nosuch=1"],
     r"'trainer.nosuch' is not a key of trainer \(its keys: amp, batch_size, .*\); to add a new "
     r"key write \+trainer.nosuch=..."),
    ("train", ["data.options.colour=1"], r"'data.options.colour' is not a key of data.options"),
    ("train", ["+trainer.nosuch=1"], r"'trainer.nosuch' is not a trainer setting; the settings"),
    ("train", ["trainer.curriculum.warm=1"], r"'trainer.curriculum.warm' is not a key of "),
    ("train", ["seed=abc"], r"'seed' should be an integer >= 0 but got 'abc'"),
    ("train", ["pos_embed=rope"], r"'pos_embed' should be one of patch, slot, none but got 'rope'"),
    ("train", ["trainer.amp=maybe"], r"'trainer.amp' should be auto, true or false but got"),
    ("train", ["trainer.device=tpu"], r"'trainer.device' should be one of auto, cpu, cuda but got"),
    ("train", ["trainer.grad_clip=-1"], r"'trainer.grad_clip' should be a number > 0 or null"),
    ("train", ["trainer.resume=maybe"], r"'trainer.resume' should be true or false but got"),
    ("train", ["data.patch_size=0"], r"'data.patch_size' should be an integer >= 1 but got 0"),
    ("train", [*ESTIMATOR, "estimator.tau.min=0"], r"'estimator.tau' should have 0 < min <= max"),
    ("train", [*ESTIMATOR, "estimator.tau.schedule=step"], r"'estimator.tau.schedule' should be "),
    ("train", [*ESTIMATOR, "estimator.lr=-1"], r"'estimator.lr' should be a number > 0 but got"),
    ("train", ["trainer=="], r"the override 'trainer==' does not parse; overrides read key=value"),
    ("train", ["--verbose"], r"unknown option '--verbose'; accepted: --cfg, --help, key=value"),
    ("train", ["data=imagefolder"], r"'data.options.root' has no value; give it on the command "),
    ("train", ["data=imagefolder", "data.options.root=/no/such/folder"], r"/no/such/folder"),
    ("study", ["study=smoke", "study.methods=[row_major,nosuch]"], r"unknown method 'nosuch'"),
    ("study", ["study=smoke", "study.n_trials=0"], r"'study.n_trials' should be an integer >= 1"),
    ("study", ["study=smoke", "study.metric=loss"], r"'study.metric' should be one of"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "overrides", "pattern"), CASES, ids=lambda v: str(v))
def test_bad_input_ends_in_one_line(tmp_path, monkeypatch, capsys, command, overrides, pattern):
    monkeypatch.chdir(tmp_path)  # default output folders land here, if anything is written
    monkeypatch.delenv(FULL_ERROR, raising=False)
    monkeypatch.setattr(train_cli, "train", forbidden)
    monkeypatch.setattr(study_module, "train", forbidden)
    with pytest.raises(SystemExit) as stop:
        COMMANDS[command](overrides)
    assert stop.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(pattern, err), err
    assert not (tmp_path / "outputs" / "train").exists()


def forbidden(*args, **kwargs):
    raise AssertionError("bad input should be refused before any training")


def test_the_full_error_switch_shows_the_exception(monkeypatch):
    monkeypatch.setenv(FULL_ERROR, "1")
    with pytest.raises(ValueError, match="'trainer.epochs' should be an integer >= 1"):
        train_cli.main(["trainer.epochs=0"])


def test_the_command_line_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "diffsort_reorder.train", "trainer.lr=abc"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr == "error: 'trainer.lr' should be a number > 0 but got 'abc'\n"
    assert proc.stdout == ""


def test_help_and_cfg_answer_without_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_cli, "train", forbidden)
    train_cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: diffsort-train [key=value ...]")
    assert f"backbone: {', '.join(list_backbones())}" in out
    train_cli.main(["--cfg", "trainer.epochs=3"])
    assert "  epochs: 3\n" in capsys.readouterr().out
    assert not (tmp_path / "outputs").exists()


def default_dir(*overrides: str) -> str:
    return compose_config(list(overrides)).output_dir


def test_the_default_run_folder_is_one_per_config():
    base = default_dir()
    assert re.fullmatch(r"outputs/train/planted-txl-row_major-seed0-[0-9a-f]{8}", base)
    assert default_dir() == base  # the same command: the same folder, so it resumes
    # How a run is driven is not what it computes: the same folder.
    assert default_dir("trainer.progress=false", "trainer.stop_after_epochs=1") == base
    others = [default_dir(o) for o in ("data.patch_size=2", "trainer.lr=0.01", "seed=1")]
    assert len({base, *others}) == 4


def test_a_repeated_command_resumes_and_another_config_does_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_cli.main([*TINY, "trainer.stop_after_epochs=1"])
    (first,) = (tmp_path / "outputs" / "train").iterdir()
    assert json.loads((first / "result.json").read_text())["epochs"] == 1
    epochs, train_epoch = [], train_loop.train_epoch
    monkeypatch.setattr(
        train_loop,
        "train_epoch",
        lambda run, epoch, *a: epochs.append(epoch) or train_epoch(run, epoch, *a),
    )
    train_cli.main(TINY)  # the same command, to the end: resumes at epoch 1
    assert epochs == [1]
    result = json.loads((first / "result.json").read_text())
    assert result["finished"] and result["epochs"] == 2
    train_cli.main([*TINY, "data.patch_size=2"])  # another config, another folder
    assert len(list((tmp_path / "outputs" / "train").iterdir())) == 2
