"""One contract, run over every registered estimator (timm's style of testing its models), each
below and above its ``materialize_limit``: below, the relaxations form ``P``; above, those with an
apply path order the tokens without it (``out.soft`` None) and those without refuse to be built."""

import inspect
import math

import pytest
import torch

import estimators
from estimators import create_estimator, list_estimators
from estimators.registry import ESTIMATORS

B, N, D = 4, 9, 5
EXPECTED = {"plackett_luce", "gumbel_sinkhorn", "softsort", "neuralsort", "torchsort", "ot_sort",
            "saliency"}  # fmt: skip
NAMES = list_estimators()
# below: never apply (P formed at any N); above: always apply (materialize_limit=0 < N). inf, as a
# config spells never: create_estimator drops None, which then means the default.
LIMITS = {"below": math.inf, "above": 0}


def init_order():
    order = torch.tensor([3, 7, 0, 8, 1, 5, 2, 6, 4])
    assert not torch.equal(order[order], torch.arange(N))  # not its own inverse
    return order


def sized(name, dim=D):
    """The token width for estimators that score tokens (``dim`` in their signature)."""
    return {"dim": dim} if "dim" in inspect.signature(ESTIMATORS[name]).parameters else {}


def make(name, limit="below", seed=0, **hparams):
    torch.manual_seed(seed)
    hparams.setdefault("materialize_limit", LIMITS[limit])
    return create_estimator(name, num_tokens=N, init_order=init_order(), **sized(name), **hparams)


def soft_path(name):
    return make(name, "below").soft_path


# Every estimator below its limit; above it, every one with an apply path (those that form P
# refuse it: test_matrix_estimators_refuse_tokens_above_the_limit; Plackett-Luce has no P at all).
CASES = [(name, "below") for name in NAMES] + [
    (name, "above") for name in NAMES if soft_path(name) == "apply"
]


def tokens(seed=1):
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed))


def step(est, x):
    """One training step's backward; returns the output."""
    out = est(x)
    per_sample = (out.tokens * torch.linspace(-1, 1, N).view(1, N, 1)).sum((1, 2))  # (B,)
    (per_sample.mean() + est.surrogate_loss(out, per_sample)).backward()
    return out


def test_registry_has_every_estimator():
    assert EXPECTED <= set(NAMES)


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_shapes_and_types(name, limit):
    est = make(name, limit)
    out = est(tokens())
    assert isinstance(out, estimators.PermutationOutput)
    assert out.tokens.shape == (B, N, D) and out.index.shape == (B, N)
    assert out.index.dtype == torch.long
    if out.soft is not None:
        assert out.soft.shape == (B, N, N)
    if out.log_prob is not None:
        assert out.log_prob.shape == (B,)
    if est.applies():  # pathwise, without forming P
        assert out.soft is None and out.log_prob is None
    else:
        assert (out.soft is None) != (out.log_prob is None)  # pathwise or score-function


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_soft_matrix_sums(name, limit):
    est = make(name, limit, tau=0.5)
    x = tokens()
    out = est(x)
    if est.applies():  # no P: the tokens equal what the matrix path gives
        dense = make(name, "below", tau=0.5)
        dense.load_state_dict(est.state_dict())
        assert torch.allclose(out.tokens, dense(x).tokens, atol=1e-5)
        return
    if out.soft is None:  # score-function estimators move whole tokens
        assert torch.equal(out.tokens, x.gather(1, out.index.unsqueeze(-1).expand(B, N, D)))
        return
    ones = torch.ones(out.soft.shape[:-1])
    if est.doubly_stochastic:  # iterative: both sums within the marginal error it reports
        err = float(out.aux["marginal_error"])
        assert err < 0.05
        assert torch.allclose(out.soft.sum(-1), ones, atol=err + 1e-5)
        assert torch.allclose(out.soft.sum(-2), ones, atol=err + 1e-5)
    else:
        assert torch.allclose(out.soft.sum(-1), ones, atol=1e-5)
    assert torch.allclose(out.tokens, out.soft @ x, atol=1e-5)


@pytest.mark.parametrize(("name", "limit"), CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_index_is_a_valid_permutation_and_nothing_is_nan(name, limit, mode):
    est = make(name, limit)
    est.train(mode == "train")
    out = est(tokens())
    assert torch.equal(out.index.sort(-1).values, torch.arange(N).expand(B, N))
    assert torch.isfinite(out.tokens).all()
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.aux.values())


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_eval_is_hard_and_returns_init_order(name, limit):
    est = make(name, limit).eval()
    x = tokens()
    out = est(x)
    assert torch.equal(out.index, init_order().expand(B, N))  # the order itself, not its inverse
    assert torch.equal(out.tokens, x[:, init_order()])
    assert out.soft is None and out.log_prob is None
    assert torch.equal(est.order(), init_order())


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_every_parameter_gets_a_gradient(name, limit):
    est = make(name, limit)
    assert list(est.parameters())
    step(est, tokens(1))  # the first step sets REINFORCE's baseline
    est.zero_grad()
    step(est, tokens(2))
    for pname, p in est.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_same_seed_same_result(name, limit):
    a, b = make(name, limit, seed=5), make(name, limit, seed=5)
    torch.manual_seed(11)
    out_a = step(a, tokens())
    torch.manual_seed(11)
    out_b = step(b, tokens())
    assert torch.equal(out_a.tokens, out_b.tokens) and torch.equal(out_a.index, out_b.index)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad)


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_tau_can_be_set_every_step(name, limit):
    est = make(name, limit)
    est.tau = 3.0
    torch.manual_seed(0)
    warm = est(tokens())
    est.tau = 0.05
    torch.manual_seed(0)
    cold = est(tokens())
    assert est.tau == 0.05
    if warm.soft is not None:
        assert not torch.allclose(warm.soft, cold.soft)
    elif warm.log_prob is not None:
        assert not torch.allclose(warm.log_prob, cold.log_prob)
    else:  # applied without P
        assert not torch.allclose(warm.tokens, cold.tokens)
    with pytest.raises(ValueError, match="'tau' should be a positive finite number but got 0"):
        est.tau = 0.0


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_single_token(name, limit):
    est = create_estimator(name, num_tokens=1, materialize_limit=LIMITS[limit], **sized(name, 2))
    x = torch.randn(3, 1, 2)
    out = est(x)
    assert torch.allclose(out.tokens, x) and torch.equal(
        out.index, torch.zeros(3, 1, dtype=torch.long)
    )
    assert torch.equal(est.eval()(x).tokens, x)


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_float64(name, limit):
    est = make(name, limit).double()
    out = est(tokens().double())
    assert out.tokens.dtype == torch.float64


@pytest.mark.parametrize(("name", "limit"), CASES)
def test_bad_input(name, limit):
    est = make(name, limit)
    with pytest.raises(
        ValueError, match=f"'tokens' should be \\(B, {N}, D\\) but got \\(4, 8, 5\\)"
    ):
        est(torch.zeros(4, 8, 5))
    with pytest.raises(ValueError, match="'tokens' should have at least 3"):
        est(torch.zeros(N, 5))
    with pytest.raises(TypeError, match="'tokens' should be a floating-point tensor"):
        est(torch.zeros(4, N, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="'num_tokens' should be an int >= 1 but got 0"):
        create_estimator(name, num_tokens=0, **sized(name))
    with pytest.raises(ValueError, match="'tau' should be a positive finite number but got -1"):
        create_estimator(name, num_tokens=N, tau=-1.0, **sized(name))
    with pytest.raises(ValueError, match="'init_order' should be a permutation of range\\(9\\)"):
        create_estimator(
            name, num_tokens=N, init_order=torch.zeros(N, dtype=torch.long), **sized(name)
        )


@pytest.mark.parametrize("name", [name for name in NAMES if soft_path(name) == "matrix"])
def test_matrix_estimators_refuse_tokens_above_the_limit(name):
    make(name, materialize_limit=N)  # at the limit: built
    match = f"'materialize_limit' should be >= num_tokens={N} .* but got {N - 1}"
    with pytest.raises(ValueError, match=match):
        make(name, materialize_limit=N - 1)


@pytest.mark.parametrize("never", [None, math.inf])
def test_never_apply_holds_above_the_default_limit(never):
    n = 5000  # above the default 4096: only "never" keeps P formed here
    est = estimators.score_estimators.SoftSortEstimator(n, materialize_limit=never)
    assert est.materialize_limit is None and not est.applies()
    assert create_estimator("softsort", num_tokens=n, materialize_limit=math.inf).applies() is False
    assert create_estimator("softsort", num_tokens=n).applies()  # None from a config: default


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [-1, 2.5, True, -math.inf])
def test_bad_materialize_limit(name, bad):
    error = TypeError if isinstance(bad, bool) else ValueError  # -inf, nan: not an int >= 0
    with pytest.raises(error, match="'materialize_limit' should be an int >= 0"):
        create_estimator(name, num_tokens=N, materialize_limit=bad, **sized(name))


def test_unknown_estimator_lists_the_names():
    with pytest.raises(ValueError, match="unknown estimator 'sinkhorn'.*gumbel_sinkhorn.*softsort"):
        create_estimator("sinkhorn", num_tokens=4)


def test_none_hparams_mean_default():
    est = create_estimator("gumbel_sinkhorn", num_tokens=4, n_iters=None, tau=None)
    assert est.n_iters == 20 and est.tau == 1.0
