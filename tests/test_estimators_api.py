"""The estimators library as users meet it: checked permutations, numbers of any scalar kind,
plain registry errors, lazy optional imports, and a documented public surface."""

import importlib
import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

import estimators
from estimators import (
    apply_permutation,
    create_estimator,
    gumbel_sinkhorn,
    list_estimators,
    neuralsort,
    ot_sort,
    plackett_luce_log_prob,
    plackett_luce_sample,
    plackett_luce_sequential_entropy,
    register_estimator,
    registry,
    sinkhorn,
    soft_rank_permutation,
    softsort,
)
from estimators.registry import ESTIMATORS

B, N, D = 2, 5, 3
ATOL = 1e-6  # the same computation, its number given as another scalar type
NAMES = list_estimators()
PUBLIC_API = {
    "sinkhorn", "gumbel_sinkhorn", "softsort", "neuralsort", "ot_sort", "soft_rank_permutation",
    "sort_permutation", "plackett_luce_sample", "plackett_luce_log_prob",
    "plackett_luce_sequential_entropy", "hard_permutation", "apply_permutation",
    "register_estimator", "create_estimator", "list_estimators", "PermutationEstimator",
    "PermutationOutput", "SinkhornConvergenceWarning", "SinkhornFallbackWarning",
    "Wants",  # what an estimator asks the model for (``est.wants``)
    "softsort_apply",  # softsort(s) @ x without the N x N matrix
}  # fmt: skip
HELPERS = {"sinkhorn_ref": "sinkhorn", "sample_gumbel": "sinkhorn", "marginal_error": "sinkhorn",
           "ramp_scores": "base"}  # fmt: skip
SUBMODULES = ("permutation", "plackett_luce", "registry", "sinkhorn", "relaxations", "base",
              "score_estimators", "samplers", "saliency", "matrix_free")  # fmt: skip
TORCHSORT_RECIPE = "pip install --no-build-isolation torchsort"


def extra(name, dim=D):
    """What estimator ``name`` needs beyond ``num_tokens`` (its ``extra_required``)."""
    return {k: dim for k in ESTIMATORS[name].extra_required}


def tokens():
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(0))


def logits():
    return torch.randn(B, N, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------- hard permutations are checked
VALID = torch.tensor([[3, 0, 4, 1, 2], [0, 1, 2, 3, 4]])
NOT_PERMUTATIONS = [
    ([[0, 1, 2, 3, 7], [0, 1, 2, 3, 4]], r"in every row but row 0 has 7 \(out of range\)"),
    ([[0, 1, 2, 3, 4], [0, 2, 2, 3, 4]], r"in every row but row 1 repeats 2"),
    ([[4, 4, 9, 1, 0], [0, 1, 2, 3, 4]], r"row 0 repeats 4"),  # the first bad entry
    ([0, 1, -1, 3, 4], r"range\(5\) but it has -1 \(out of range\)"),
    ([4, 3, 2, 1, 4], r"range\(5\) but it repeats 4"),
]
TAKES_INDEX = {
    "apply_permutation": lambda index: apply_permutation(tokens(), index=index),
    "plackett_luce_log_prob": lambda index: plackett_luce_log_prob(logits(), index),
    "plackett_luce_sequential_entropy": lambda index: plackett_luce_sequential_entropy(
        logits(), index
    ),
}


@pytest.mark.parametrize("fn", TAKES_INDEX)
@pytest.mark.parametrize(("index", "message"), NOT_PERMUTATIONS)
def test_functions_refuse_an_index_that_is_not_a_permutation(fn, index, message):
    with pytest.raises(ValueError, match=r"'index' should be a permutation of range\(5\).*"):
        TAKES_INDEX[fn](torch.tensor(index))
    with pytest.raises(ValueError, match=message):
        TAKES_INDEX[fn](torch.tensor(index))


def test_the_message_names_a_row_of_a_batch_of_batches():
    index = VALID.expand(2, 2, N).clone()
    index[1, 0, 3] = 0
    with pytest.raises(ValueError, match=r"row \(1, 0\) repeats 0"):
        plackett_luce_log_prob(torch.zeros(2, 2, N), index)


@pytest.mark.parametrize("fn", TAKES_INDEX)
def test_functions_take_a_valid_permutation(fn):
    assert torch.isfinite(TAKES_INDEX[fn](VALID)).all()
    assert torch.equal(apply_permutation(tokens(), index=VALID), tokens()[[[0], [1]], VALID])


INIT_ORDERS = [
    ([0, 1, 2, 3, 7], r"but it has 7 \(out of range\)"),
    ([0, 2, 2, 3, 4], r"but it repeats 2"),
    ([4, 4, 9, 1, 0], r"but it repeats 4"),  # the first bad entry, not the largest
    ([[0, 1, 2, 3, 4]], r"should be one permutation \(5,\) but got shape \(1, 5\)"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("order", "message"), INIT_ORDERS)
def test_init_order_must_be_a_permutation(name, order, message):
    with pytest.raises(ValueError, match=rf"'init_order' .*{message}"):
        create_estimator(name, num_tokens=N, init_order=torch.tensor(order), **extra(name))


SAMPLED_OR_SORTED = [
    ("plackett_luce", {}),
    ("plackett_luce_rloo", {}),
    ("softsort", {}),
    ("saliency", {"relaxation": "plackett_luce"}),
    ("saliency", {"relaxation": "neuralsort"}),
]


@pytest.mark.parametrize(("name", "hparams"), SAMPLED_OR_SORTED)
def test_estimators_skip_the_check_on_indices_they_built(name, hparams, monkeypatch):
    """The check reads the index (a GPU sync): the estimators' own sorts and samples skip it."""
    est = create_estimator(name, num_tokens=N, **extra(name), **hparams)  # init_order: checked
    calls = []

    def counting(arg, index, n):
        calls.append(arg)
        return index

    for module in ("permutation", "plackett_luce", "base", "saliency"):
        mod = importlib.import_module(f"estimators.{module}")
        if hasattr(mod, "check_permutation_index"):
            monkeypatch.setattr(mod, "check_permutation_index", counting)
    x = tokens()
    out = est.train()(x)
    loss = out.tokens.sum((1, 2))
    (loss.mean() + est.surrogate_loss(out, loss)).backward()
    est.eval()(x)
    assert calls == []
    apply_permutation(x, index=out.index)  # while the public function still checks
    assert calls == ["index"]


# ------------------------------------------------------------ numbers of every scalar kind
HALF_FORMS = [0.5, np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor(0.5).double()]
THREE_FORMS = [3, 3.0, np.int64(3), np.int32(3), torch.tensor(3)]
TAU_FUNCTIONS = {
    "softsort": lambda tau: softsort(logits(), tau=tau),
    "neuralsort": lambda tau: neuralsort(logits(), tau=tau),
    "ot_sort": lambda tau: ot_sort(logits(), tau=tau),
    "soft_rank_permutation": lambda tau: soft_rank_permutation(logits(), tau=tau),
    "gumbel_sinkhorn": lambda tau: gumbel_sinkhorn(torch.zeros(N, N), tau=tau, noise=tau),
    "plackett_luce_log_prob": lambda tau: plackett_luce_log_prob(logits(), VALID, tau=tau),
    "plackett_luce_sample": lambda tau: plackett_luce_sample(
        logits(), tau=tau, generator=torch.Generator().manual_seed(2)
    ),
}


@pytest.mark.parametrize("fn", TAU_FUNCTIONS)
@pytest.mark.parametrize("tau", HALF_FORMS[1:], ids=lambda v: type(v).__name__)
def test_tau_may_be_any_real_scalar(fn, tau):
    torch.manual_seed(0)
    expected = TAU_FUNCTIONS[fn](0.5)
    torch.manual_seed(0)
    assert torch.allclose(TAU_FUNCTIONS[fn](tau), expected, atol=ATOL)


@pytest.mark.parametrize("n_iters", THREE_FORMS, ids=lambda v: type(v).__name__)
def test_counts_may_be_any_whole_real_scalar(n_iters):
    log_alpha = torch.randn(N, N, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sinkhorn(log_alpha, n_iters=n_iters), sinkhorn(log_alpha, n_iters=3))
    assert plackett_luce_sample(logits(), num_samples=n_iters).shape == (3, B, N)
    x = torch.randn(B, N + 3, D)
    out = apply_permutation(x, index=torch.arange(N), num_prefix_tokens=n_iters)
    assert torch.equal(out, x)


@pytest.mark.parametrize("half", HALF_FORMS, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("three", THREE_FORMS, ids=lambda v: type(v).__name__)
def test_estimator_hparams_may_be_any_real_scalar(half, three):
    gs = create_estimator("gumbel_sinkhorn", N, tau=half, n_iters=three, noise=half)
    assert (gs.tau, gs.n_iters, gs.noise) == (0.5, 3, 0.5)
    assert type(gs.tau) is float and type(gs.n_iters) is int and type(gs.noise) is float
    pl = create_estimator("plackett_luce", N, momentum=half, entropy_weight=half, num_samples=three)
    assert (pl.momentum, pl.entropy_weight, pl.num_samples) == (0.5, 0.5, 3)
    sal = create_estimator("saliency", N, dim=three, hidden=three, tau=half)
    assert sal(torch.randn(B, N, 3)).tokens.shape == (B, N, 3)
    sal.tau = half
    assert sal.tau == 0.5


BOOLS = [True, np.bool_(True), torch.tensor(True)]
CALLS = {
    "tau": lambda v: softsort(logits(), tau=v),
    "n_iters": lambda v: sinkhorn(torch.zeros(N, N), n_iters=v),
    "noise": lambda v: gumbel_sinkhorn(torch.zeros(N, N), noise=v),
    "num_samples": lambda v: plackett_luce_sample(logits(), num_samples=v),
    "momentum": lambda v: create_estimator("plackett_luce", N, momentum=v),
    "hidden": lambda v: create_estimator("saliency", N, dim=D, hidden=v),
    "num_prefix_tokens": lambda v: apply_permutation(tokens(), index=VALID, num_prefix_tokens=v),
}


@pytest.mark.parametrize("arg", CALLS)
@pytest.mark.parametrize("value", BOOLS, ids=lambda v: type(v).__name__)
def test_bools_are_refused(arg, value):
    with pytest.raises(TypeError, match=rf"'{arg}' should be .*not a bool.* but got"):
        CALLS[arg](value)


BAD_NUMBERS = [
    ("tau", -0.5, ValueError, "'tau' should be a positive finite number but got -0.5"),
    ("tau", np.float32("nan"), ValueError, "'tau' should be a positive finite .* got nan"),
    ("tau", torch.tensor([0.5]), TypeError, r"'tau' should be .*0-d tensor.* shape \(1,\)"),
    ("tau", "0.5", TypeError, "'tau' should be a positive number.* got '0.5'"),
    ("n_iters", 2.5, ValueError, "'n_iters' should be an int >= 1 but got 2.5"),
    ("n_iters", np.int64(0), ValueError, "'n_iters' should be an int >= 1 but got 0"),
    ("noise", -1, ValueError, "'noise' should be a finite number >= 0 but got -1"),
    ("momentum", 1.0, ValueError, r"'momentum' should be .* in \[0, 1\) but got 1"),
    ("momentum", torch.tensor(-0.1), ValueError, r"'momentum' .* in \[0, 1\) but got -0.1"),
    ("hidden", np.float64(0.5), ValueError, "'hidden' should be an int >= 1 but got 0.5"),
]


@pytest.mark.parametrize(("arg", "value", "error", "message"), BAD_NUMBERS)
def test_a_bad_number_is_named_with_its_value_and_what_is_accepted(arg, value, error, message):
    with pytest.raises(error, match=message):
        CALLS[arg](value)


# ------------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("name", NAMES)
def test_unknown_hparam_lists_the_accepted_ones(name):
    accepted = [p for p in inspect.signature(ESTIMATORS[name]).parameters if p != "num_tokens"]
    with pytest.raises(TypeError, match=f"estimator '{name}' got unknown hparam.*'bogus'") as err:
        create_estimator(name, num_tokens=N, bogus=1, **extra(name))
    assert "PermutationEstimator" not in str(err.value) and "__init__" not in str(err.value)
    listed = str(err.value).split("it accepts: ")[1].split(", ")
    assert sorted(listed) == sorted(accepted) and "tau" in listed and "init_order" in listed


def test_unknown_hparam_suggests_a_close_name():
    with pytest.raises(TypeError, match="'n_iter' \\(did you mean 'n_iters'\\?\\)"):
        create_estimator("gumbel_sinkhorn", num_tokens=N, n_iter=3)


@pytest.mark.parametrize("name", NAMES)
def test_every_estimator_takes_num_tokens_and_declares_what_else_it_needs(name):
    params = list(inspect.signature(ESTIMATORS[name]).parameters.values())
    assert params[0].name == "num_tokens"
    required = {p.name for p in params[1:] if p.default is inspect.Parameter.empty}
    assert required == set(ESTIMATORS[name].extra_required)
    est = create_estimator(name, N, **extra(name))
    assert est.num_tokens == N and est.name == name


@pytest.mark.parametrize("dim", [{}, {"dim": None}])
def test_saliency_says_it_needs_dim(dim):
    with pytest.raises(ValueError, match=r"estimator 'saliency' also needs dim=<token width>"):
        create_estimator("saliency", num_tokens=N, **dim)
    assert create_estimator("saliency", num_tokens=N, dim=D).dim == D


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so a test may register names without leaving them behind."""
    monkeypatch.setattr(registry, "ESTIMATORS", registry.ESTIMATORS.copy())
    return registry.ESTIMATORS


def test_registering_a_taken_name_warns(scratch_registry):
    first = register_estimator("scratch")(type("First", (estimators.PermutationEstimator,), {}))
    with pytest.warns(UserWarning, match="estimator 'scratch' is already registered.*Second"):
        second = register_estimator("scratch")(
            type("Second", (estimators.PermutationEstimator,), {})
        )
    assert scratch_registry["scratch"] is second is not first
    with pytest.warns(UserWarning, match="estimator 'softsort' is already registered"):
        register_estimator("softsort")(type("Third", (estimators.PermutationEstimator,), {}))
    assert ESTIMATORS["softsort"].__name__ == "SoftSortEstimator"  # the real one is untouched


def test_missing_torchsort_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsort", None)  # `import torchsort` now fails
    with pytest.raises(ImportError, match=TORCHSORT_RECIPE):
        soft_rank_permutation(logits())
    with pytest.raises(ImportError, match=TORCHSORT_RECIPE):
        create_estimator("torchsort", num_tokens=N)


def test_import_loads_no_optional_dependency():
    script = (
        "import estimators, sys, torch\n"
        "loaded = {'scipy', 'ot', 'torchsort'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
        "estimators.hard_permutation(torch.eye(3))\n"
        "assert 'scipy' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------ the public surface
def test_all_is_exactly_the_public_api():
    assert set(estimators.__all__) == PUBLIC_API
    assert len(estimators.__all__) == len(PUBLIC_API)  # no name twice


@pytest.mark.parametrize("name", sorted(PUBLIC_API))
def test_every_public_name_is_documented(name):
    obj = getattr(estimators, name)
    assert (obj.__doc__ or "").strip(), name


@pytest.mark.parametrize(("name", "module"), HELPERS.items())
def test_helpers_live_in_their_submodules(name, module):
    assert name not in estimators.__all__
    obj = getattr(importlib.import_module(f"estimators.{module}"), name)
    assert (obj.__doc__ or "").strip()
    assert getattr(estimators, name) is obj  # still importable from the package, for old callers


@pytest.mark.parametrize("module", SUBMODULES)
def test_public_functions_and_classes_of_submodules_are_documented(module):
    mod = importlib.import_module(f"estimators.{module}")
    own = [
        (name, obj)
        for name, obj in vars(mod).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == mod.__name__
    ]
    assert own
    undocumented = [name for name, obj in own if not (obj.__doc__ or "").strip()]
    assert undocumented == []


def test_public_methods_of_the_base_class_are_documented():
    base = estimators.PermutationEstimator
    public = [name for name in vars(base) if not name.startswith("_")]
    members = [getattr(base, name) for name in public]
    methods = [
        name
        for name, obj in zip(public, members, strict=True)
        if inspect.isfunction(obj) or isinstance(vars(base)[name], property)
    ]
    assert {"forward", "order", "surrogate_loss", "tau", "hard_output"} <= set(methods)
    undocumented = [name for name in methods if not inspect.getdoc(vars(base)[name])]
    assert undocumented == []
