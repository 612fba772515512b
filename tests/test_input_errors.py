"""Nothing lost, nothing silent: a group choice that would be ignored selects its method or is
refused; non-finite scores and logits are refused by the library, named; every input the
commands refuse ends in one line (``error: ...``, exit status 2, no traceback) before any work;
and a run or a prior shows progress in a log without a terminal."""

import re
import subprocess
import sys
import warnings

import pytest
import torch
from tiny_runs import TINY

import estimators
from diffsort_reorder.cli import EXIT_BAD_INPUT
from diffsort_reorder.config import compose_config
from diffsort_reorder.orders.priors.cli import main as priors_main
from diffsort_reorder.run import cli as train_cli
from diffsort_reorder.run.build import prepare_run
from diffsort_reorder.run.loop import train
from diffsort_reorder.study import cli as study_cli
from diffsort_reorder.study.search import TRIAL_ERRORS
from estimators.registry import ESTIMATORS

N = 5
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------- item 9: no group choice ignored
@pytest.mark.parametrize(
    ("overrides", "method"),
    [(["estimator=softsort"], "softsort"), (["prior=compression"], "compression_prior"),
     (["prior=collapse_prior"], "collapse_prior"), (["method=hilbert"], "hilbert")],
)  # fmt: skip
def test_an_estimator_or_prior_group_selects_its_method(overrides, method):
    cfg = compose_config(overrides)
    assert cfg.method == method
    assert cfg.estimator is None or cfg.estimator.name == method


def test_the_study_help_lists_only_the_groups_a_study_reads(capsys):
    study_cli.main(["--help"])
    out = capsys.readouterr().out
    groups = re.findall(r"^  (\w+): ", out, flags=re.MULTILINE)
    assert groups == ["study", "space"]
    assert "study.overrides" in out  # where the runs' data=, backbone=, ... go


# ------------------------------------------------ item 11: the library refuses non-finite input
def scores(bad: float) -> torch.Tensor:
    return torch.tensor([0.3, bad, -0.2, 0.1, 0.0])


PUBLIC = {  # function -> (how to call it on scores or logits holding ``bad``, the argument named)
    "softsort": (lambda s: estimators.softsort(s, tau=0.5), "scores"),
    "neuralsort": (lambda s: estimators.neuralsort(s, tau=0.5), "scores"),
    "ot_sort": (lambda s: estimators.ot_sort(s, tau=0.1), "scores"),
    "soft_rank_permutation": (lambda s: estimators.soft_rank_permutation(s, tau=0.5), "scores"),
    "softsort_apply": (lambda s: estimators.softsort_apply(s, torch.randn(N, 2)), "scores"),
    "plackett_luce_sample": (lambda s: estimators.plackett_luce_sample(s), "logits"),
    "plackett_luce_log_prob": (
        lambda s: estimators.plackett_luce_log_prob(s, torch.arange(N)),
        "logits",
    ),
    "gumbel_sinkhorn": (
        lambda s: estimators.gumbel_sinkhorn(s.unsqueeze(0).expand(N, N), tau=0.5),
        "log_alpha",
    ),
    "sinkhorn": (lambda s: estimators.sinkhorn(s.unsqueeze(0).expand(N, N)), "log_alpha"),
}


@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "inf"])
@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_non_finite_scores_are_refused_by_name(name, bad):
    if name == "soft_rank_permutation":
        pytest.importorskip("torchsort")
    call, argument = PUBLIC[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning blaming an overflow
        with pytest.raises(ValueError, match=f"'{argument}' should be finite") as caught:
            call(scores(bad))
    assert isinstance(caught.value, FloatingPointError)  # a training loop's clean failure
    assert re.search(r"holds \d+ NaN and \d+ \+?inf of \d+ \(shape", str(caught.value))


def test_sinkhorn_keeps_taking_forbidden_pairs():
    """``-inf`` in log_alpha is a forbidden pair, not an error, while every row and column keeps
    a finite entry."""
    log_alpha = torch.randn(N, N, generator=torch.Generator().manual_seed(0))
    log_alpha[0, 1] = log_alpha[3, 2] = -INF
    P = estimators.sinkhorn(log_alpha, n_iters=50)
    assert torch.isfinite(P).all() and P[0, 1] == 0 and P[3, 2] == 0


def test_the_checked_functions_still_run_under_bf16_autocast():
    s = torch.randn(2, N, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.autocast("cpu", torch.bfloat16):
        P = estimators.softsort(s, tau=0.5)
        index = estimators.plackett_luce_sample(s)
        with pytest.raises(ValueError, match="'scores' should be finite"):
            estimators.neuralsort(torch.full((N,), NAN, dtype=torch.bfloat16))
    assert P.dtype == torch.float32 and torch.isfinite(P).all() and index.shape == (1, 2, N)


def built(name: str) -> tuple[torch.nn.Module, str]:
    """Estimator ``name`` with a NaN in its first parameter, and that parameter's name."""
    if name == "torchsort":
        pytest.importorskip("torchsort")
    extra = {k: 3 for k in ESTIMATORS[name].extra_required}
    est = estimators.create_estimator(name, num_tokens=N, **extra)
    first, param = next(iter(est.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = NAN
    return est, first


@pytest.mark.parametrize("name", estimators.list_estimators())
def test_eval_refuses_a_non_finite_parameter(name):
    est, param = built(name)
    tokens = torch.randn(2, N, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=f"'{param}' should be finite"):
        est.eval()(tokens)


@pytest.mark.parametrize("name", estimators.list_estimators())
def test_training_never_hides_a_non_finite_parameter(name):
    """A training step either refuses it (where the estimator syncs anyway) or lets it reach
    the tokens, and so the loss a training loop checks: never a finite-looking output."""
    est, param = built(name)
    tokens = torch.randn(2, N, 3, generator=torch.Generator().manual_seed(0))
    try:
        out = est.train()(tokens)
    except ValueError as err:
        assert f"'{param}' should be finite" in str(err) or "'log_alpha'" in str(err)
        assert isinstance(err, FloatingPointError)
    else:
        assert not torch.isfinite(out.tokens).all()


def test_an_init_order_given_by_name_is_refused_in_words():
    with pytest.raises(TypeError, match=r"'init_order' should be a permutation .* 'hilbert'"):
        estimators.create_estimator("softsort", num_tokens=N, init_order="hilbert")


def test_a_nan_in_training_ends_the_run_as_a_study_trial_failure(tmp_path):
    """The refusal is a FloatingPointError to the loop and the study (TRIAL_ERRORS): the run
    fails as on a non-finite loss, at its first step."""
    cfg = compose_config([*TINY, "method=plackett_luce", f"output_dir={tmp_path}"])
    run = prepare_run(cfg)
    with torch.no_grad():
        run.orderer.logits[0] = NAN
    with pytest.raises(TRIAL_ERRORS, match="'logits' should be finite") as caught:
        train(cfg, run=run)
    assert isinstance(caught.value, FloatingPointError)


# ------------------------------------------- item 12: every refused input ends in one line
def command(tmp_path, *args):
    """Run ``python -m <args>`` in ``tmp_path``; its exit status, stdout and stderr."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    return done.returncode, done.stdout, done.stderr


TRAIN, STUDY = "diffsort_reorder.train", "diffsort_reorder.study"
PRIORS, BENCH = "diffsort_reorder.priors", "diffsort_reorder.bench"
CASES = {  # name -> (arguments, with {file} a file's path, a pattern the one line must match)
    "train output under a file": (
        [TRAIN, "trainer=debug", "output_dir={file}/run"],
        r"'output_dir' should be a path you can write to but got '.*/run', which lies under",
    ),
    "priors output under a file": (
        [PRIORS, "output_dir={file}/prior"],
        r"'output_dir' should be a path you can write to .* lies under the file",
    ),
    "bench output under a file": (
        [BENCH, "estimators", "--sizes", "2x8", "--out", "{file}/r.json"],
        r"'--out' should be a path you can write to .* lies under the file",
    ),
    "study data folder missing": (
        [STUDY, "study=cifar10_gpu", "study.data_root=/no/such/folder", "study.output_dir=st"],
        r"'data.options.root': CIFAR-10 batches not found in '/no/such/folder'",
    ),
    "bench sizes typo": (
        [BENCH, "estimators", "--sizes", "2x8,3y9"],
        r"argument --sizes: got '2x8,3y9', whose '3y9' is not BxN; accepted: comma-separated BxN",
    ),
    "bench repeats 0": (
        [BENCH, "estimators", "--sizes", "2x8", "--repeats", "0"],
        r"argument --repeats: got '0'; accepted: a whole number >= 1",
    ),
    "study +data=": (
        [STUDY, "+data=digits"],
        r"'\+data=digits' sets 'data', which a study does not read: .* study.overrides",
    ),
    "study file by path": (
        [STUDY, "study=configs/study/smoke.yaml"],
        r"study=configs/study/smoke.yaml: give a study by name, not by path: study=smoke",
    ),
    "study data_root missing": (
        [STUDY, "study=cifar10_gpu", "study.output_dir=st"],
        r"^error: 'study.data_root' has no value; give it on the command line: study.data_root=",
    ),
    "study progress maybe": (
        [STUDY, "study=smoke", "study.progress=maybe", "study.output_dir=st"],
        r"'study.progress' should be auto, true or false but got 'maybe'",
    ),
    "train estimator beside another method": (
        [TRAIN, "method=row_major", "estimator=softsort"],
        r"estimator=softsort configures the method softsort, but method=row_major runs; write "
        r"method=softsort",
    ),
}
if not torch.cuda.is_available():
    CASES["bench cuda without cuda"] = (
        [BENCH, "estimators", "--device", "cuda", "--sizes", "2x8"],
        r"argument --device: got 'cuda', but torch sees no CUDA device here; accepted: cpu",
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_input_is_one_line_before_any_work(tmp_path, case):
    args, pattern = CASES[case]
    (tmp_path / "a-file").write_text("not a folder\n")
    args = [a.replace("{file}", str(tmp_path / "a-file")) for a in args]
    status, out, err = command(tmp_path, *args)
    assert status == EXIT_BAD_INPUT, err[-2000:]
    assert err.count("\n") == 1 and err.startswith("error: "), err[-2000:]
    assert re.search(pattern, err), err
    assert "Traceback" not in err and "MissingMandatoryValue" not in err
    assert not (tmp_path / "st").exists()  # a study left nothing behind: no storage, no trial
    assert not (tmp_path / "outputs").exists()


# ------------------------------------------------- item 13: progress without a terminal
def test_a_run_without_a_terminal_prints_a_line_per_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)  # stderr is captured: not a terminal
    train_cli.main([*TINY, "trainer.progress=auto", f"output_dir={tmp_path}"])
    lines = capsys.readouterr().err.splitlines()
    epochs = [line for line in lines if re.match(r"row_major/txl epoch \d/2: train_loss ", line)]
    assert len(epochs) == 2 and epochs[-1].startswith("row_major/txl epoch 2/2")
    assert "val_acc" in epochs[0]


def test_quiet_and_bar_runs_print_no_epoch_lines(tmp_path, capsys):
    train_cli.main([*TINY, f"output_dir={tmp_path}"])  # TINY: trainer.progress=false
    assert "epoch 1/2" not in capsys.readouterr().err


def test_a_prior_says_each_stage_as_it_starts(tmp_path, capsys):
    priors_main(["prior=compression_prior", f"output_dir={tmp_path}", "data.options.num_train=64",
                 "data.options.grid_size=4", "prior.options.max_images=32",
                 "prior.options.codebook_size=8"])  # fmt: skip
    stages = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].split()[0] for line in stages] == [
        "reading",
        "computing",
        "computed",
    ]
    assert all(line.startswith("diffsort-priors compression_prior: ") for line in stages)
