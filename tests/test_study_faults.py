"""Faults that must not eat a study's budget or mix its runs: only the run's own failures are
final (a full disk, a lost storage, a corrupt file leave the trial to be run again with the same
parameters), and a study resumed with another run config is refused before anything runs."""

import errno
import json
import subprocess
import sys

import pytest
from optuna.trial import TrialState
from test_study import NO_PRUNING, ROOT, study_config, trials

from diffsort_reorder.files import CorruptFileError
from diffsort_reorder.study import study as study_module
from diffsort_reorder.study.cli import main as study_main
from diffsort_reorder.study.search import is_final
from diffsort_reorder.study.study import Study
from estimators._checks import NonFiniteError

SOFTSORT = "study.methods=[row_major,softsort]"


@pytest.mark.parametrize(
    ("err", "final"),
    [
        (FloatingPointError("non-finite loss"), True),
        (NonFiniteError("'logits' should be finite but has 3 NaN"), True),
        (CorruptFileError("checkpoint.pt is truncated"), False),
        (ValueError("'trainer.lr' should be > 0"), True),  # a config the run refuses
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (PermissionError(errno.EROFS, "Read-only file system"), False),
        (json.JSONDecodeError("Expecting value", "", 0), False),  # a truncated result file
        (RuntimeError("PytorchStreamReader failed reading zip archive"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_only_the_runs_own_failures_are_final(err, final):
    assert is_final(err) is final


def test_a_full_disk_mid_trial_leaves_the_trial_to_be_run_again(tmp_path, monkeypatch, capsys):
    """An OSError in trial 1 stops the worker in one line, without a final reason; the re-run
    retries that trial with the same parameters and the method ends with its full budget."""
    real_train = study_module.train

    def full_disk(cfg, on_epoch=None):
        if cfg.output_dir.endswith("trial-0001"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_train(cfg, on_epoch=on_epoch)

    monkeypatch.setattr(study_module, "train", full_disk)
    argv = ["study=smoke", f"study.output_dir={tmp_path}", "study.progress=false", SOFTSORT,
            NO_PRUNING]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        study_main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 1 and "No space left on device" in err
    assert err.startswith("error: ") and err.endswith("run the same command again")
    first = trials(tmp_path, "smoke/txl/softsort")
    assert [t.state for t in first] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "fail_reason" not in first[1].user_attrs  # not final
    monkeypatch.setattr(study_module, "train", real_train)
    Study(study_config(tmp_path, SOFTSORT, NO_PRUNING)).run()
    found = trials(tmp_path, "smoke/txl/softsort")
    retry = next(t for t in found if t.user_attrs.get("retry_of") == 1)
    assert retry.state == TrialState.COMPLETE and retry.params == first[1].params
    assert sum(t.state == TrialState.COMPLETE for t in found) == 3  # study.n_trials


def test_a_refused_config_is_final_and_the_study_goes_on(tmp_path, monkeypatch):
    real_train = study_module.train

    def refused(cfg, on_epoch=None):
        if cfg.output_dir.endswith("trial-0001"):
            raise ValueError("'estimator.tau' should be > 0 but got 0.0")
        return real_train(cfg, on_epoch=on_epoch)

    monkeypatch.setattr(study_module, "train", refused)
    Study(study_config(tmp_path, SOFTSORT, NO_PRUNING)).run()
    found = trials(tmp_path, "smoke/txl/softsort")
    assert [t.state for t in found] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert found[1].user_attrs["fail_reason"].startswith("ValueError: 'estimator.tau'")


def test_a_resumed_study_with_another_run_config_is_refused(tmp_path, monkeypatch):
    """Re-running into the same folder with another trainer.epochs would reuse the old search's
    trials for the new config: refused in one line naming the change, before any training."""
    Study(study_config(tmp_path, "study.methods=[row_major,softsort]", "study.n_trials=1")).run()
    before = trials(tmp_path, "smoke/txl/softsort")

    def no_training(*args, **kwargs):
        raise AssertionError("a changed config must be refused before any training")

    monkeypatch.setattr(study_module, "train", no_training)
    changed = ("study.methods=[row_major,softsort]", "study.n_trials=1",
               "+study.method_overrides.softsort=['trainer.epochs=4']")  # fmt: skip
    with pytest.raises(ValueError, match=r"trainer.epochs: 3 -> 4.*'study.name'"):
        Study(study_config(tmp_path, *changed))
    proc = subprocess.run(
        [sys.executable, "-m", "diffsort_reorder.study", "study=smoke", *changed,
         f"study.output_dir={tmp_path}", "study.progress=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "another run config" in proc.stderr
    assert trials(tmp_path, "smoke/txl/softsort") == before  # nothing ran, nothing mixed
    # The same config resumes as before (nothing to do: every run is recorded).
    monkeypatch.setattr(study_module, "train", no_training)
    Study(study_config(tmp_path, "study.methods=[row_major,softsort]", "study.n_trials=1")).run()
