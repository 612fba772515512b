"""The suite as a user installs it: the built wheel, away from the checkout, with its console
scripts. The wheel is installed into a temporary folder (``pip install --target``) that is put on
``PYTHONPATH``, and every command runs from another temporary folder."""

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "diffsort-study": "diffsort_reorder.study.cli:console",
    "diffsort-train": "diffsort_reorder.run.cli:console",
    "diffsort-priors": "diffsort_reorder.orders.priors.cli:console",
    "diffsort-bench": "diffsort_reorder.bench.__main__:console",
}
NOT_SOURCES = (".git", ".venv", "build", "outputs", "*.egg-info", "__pycache__", ".*_cache")
TINY_RUN = [
    "trainer=debug",
    "data.options.num_train=128",
    "data.options.num_val=64",
    "data.options.grid_size=4",
    "data.options.num_keys=2",
]


def pip(*args: str) -> None:
    quiet = ("--no-deps", "-q", "--disable-pip-version-check")
    subprocess.run([sys.executable, "-m", "pip", args[0], *quiet, *args[1:]], check=True,
                   capture_output=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the sources: setuptools reuses a checkout's build/ folder, which may
    # hold files that no longer exist.
    source = tmp_path_factory.mktemp("source") / "diffsort-reorder"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-build-isolation", "-w", str(out), str(source))
    (found,) = out.glob("diffsort_reorder-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip("install", "--no-index", "--target", str(target), str(wheel))
    return target


def command(installed: Path, cwd: Path, *args: str, timeout: int = 600):
    """Run ``args`` from ``cwd`` with the installed wheel first on the path."""
    env = {**os.environ, "PYTHONPATH": str(installed), "CI": "1"}
    env.pop("DIFFSORT_FULL_ERROR", None)
    return subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_wheel_holds_every_package_config_and_console_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in [*ROOT.glob("diffsort_reorder/**/__init__.py"), *ROOT.glob("estimators/**/*.py")]:
        assert init.relative_to(ROOT).as_posix() in names
    configs = sorted(ROOT.glob("configs/**/*.yaml"))
    assert len(configs) > 30
    for path in configs:
        assert f"diffsort_reorder/configs/{path.relative_to(ROOT / 'configs').as_posix()}" in names
    assert not any(n.startswith(("configs/", "tests/", "studies/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(parser["console_scripts"]) == SCRIPTS


def test_the_installed_package_runs_from_any_folder(installed, tmp_path):
    """Imports come from the installed copy; a debug run, a prior and the smoke study run from
    a folder that is not the checkout, through the console scripts and ``python -m``."""
    where = command(installed, tmp_path, sys.executable, "-c",
                    "import diffsort_reorder.configs as c, estimators as e; "
                    "print(c.__file__); print(e.__file__)")  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(installed)) for line in where.stdout.split())

    run = command(installed, tmp_path, str(installed / "bin" / "diffsort-train"), *TINY_RUN)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["finished"] and result["epochs"] == 2
    assert Path(result["output_dir"]).parts[:2] == ("outputs", "train")
    assert (tmp_path / result["output_dir"] / "result.json").exists()
    record = json.loads((tmp_path / result["output_dir"] / "run.json").read_text())
    assert record["code_version"] == "0.1.0"  # outside a checkout: the package's version
    assert isinstance(record["threads"], int) and record["threads"] >= 1

    prior = command(installed, tmp_path, sys.executable, "-m", "diffsort_reorder.priors",
                    "prior=compression_prior", "data.options.num_train=64",
                    "data.options.grid_size=4", "prior.options.max_images=64",
                    "prior.options.codebook_size=8")  # fmt: skip
    assert prior.returncode == 0, prior.stderr[-3000:]
    assert json.loads(prior.stdout.strip().splitlines()[-1])["prior"] == "compression_prior"

    bench = command(installed, tmp_path, str(installed / "bin" / "diffsort-bench"), "--help")
    assert bench.returncode == 0 and "estimators" in bench.stdout
    for module in ("study", "train", "priors", "bench"):  # each module runs as python -m too
        proc = command(installed, tmp_path, sys.executable, "-m", f"diffsort_reorder.{module}",
                       "--help")  # fmt: skip
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: diffsort-{module}")

    study = command(installed, tmp_path, str(installed / "bin" / "diffsort-study"), "study=smoke")
    assert study.returncode == 0, study.stderr[-3000:]
    assert study.stdout.strip().splitlines()[-1] == "outputs/study/smoke/report.md"
    assert "| softsort | learned |" in (tmp_path / "outputs/study/smoke/report.md").read_text()


def test_an_installed_command_answers_bad_input_in_one_line(installed, tmp_path):
    proc = command(installed, tmp_path, str(installed / "bin" / "diffsort-train"),
                   "trainer.epochs=0")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "error: 'trainer.epochs' should be an integer >= 1 but got 0\n"
