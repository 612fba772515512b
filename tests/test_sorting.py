"""SoftSort, NeuralSort, OT sorting and torchsort soft-rank permutations."""

import ot
import pytest
import torch

from estimators import (
    hard_permutation,
    neuralsort,
    ot_sort,
    soft_rank_permutation,
    softsort,
    sort_permutation,
)

RELAXATIONS = {
    "softsort": softsort,
    "neuralsort": neuralsort,
    "ot_sort": lambda s, tau, n_iters=30, **kw: ot_sort(s, tau, n_iters=n_iters, **kw),
    "soft_rank_permutation": soft_rank_permutation,
}
TAUS = [0.1, 1.0, 10.0]


def scores_64(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", RELAXATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_sum_to_one(name, dtype):
    P = RELAXATIONS[name](scores_64(3, 7).to(dtype), tau=0.5)
    assert P.shape == (3, 7, 7) and P.dtype == dtype
    assert torch.allclose(P.sum(-1), torch.ones(3, 7, dtype=dtype), atol=1e-5)
    assert (P >= 0).all()


@pytest.mark.parametrize("name", RELAXATIONS)
def test_small_tau_is_the_descending_sort(name):
    # Well-separated scores, so a small tau gives the hard matrix.
    s = torch.tensor([[0.3, 2.0, -1.0, 1.1, -2.2, 0.7]], dtype=torch.float64)
    slow = {"n_iters": 2000} if name == "ot_sort" else {}  # entropic OT converges slowly here
    P = RELAXATIONS[name](s, tau=1e-3, **slow)
    expected = torch.nn.functional.one_hot(torch.tensor([[1, 3, 5, 0, 2, 4]]), 6).double()
    assert torch.allclose(P, expected, atol=1e-3)
    assert torch.equal(hard_permutation(P), sort_permutation(s))


@pytest.mark.parametrize("name", ["softsort", "neuralsort", "soft_rank_permutation"])
def test_large_tau_is_uniform(name):
    P = RELAXATIONS[name](scores_64(2, 5), tau=1e6)
    assert torch.allclose(P, torch.full_like(P, 0.2), atol=1e-4)


@pytest.mark.parametrize("name", RELAXATIONS)
@pytest.mark.parametrize("tau", TAUS)
def test_gradcheck(name, tau):
    s = scores_64(2, 5, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: RELAXATIONS[name](x, tau=tau), (s,), atol=1e-6)


@pytest.mark.parametrize("name", RELAXATIONS)
def test_batched_equals_per_row(name):
    s = scores_64(4, 6, seed=2)
    batched = RELAXATIONS[name](s, tau=0.7)
    rows = torch.stack([RELAXATIONS[name](row, tau=0.7) for row in s])
    assert torch.allclose(batched, rows, atol=1e-12)
    nested = RELAXATIONS[name](s.reshape(2, 2, 6), tau=0.7)
    assert torch.allclose(nested.reshape(4, 6, 6), batched, atol=1e-12)


@pytest.mark.parametrize("name", RELAXATIONS)
def test_hard_is_straight_through(name):
    s = scores_64(2, 5, seed=3).requires_grad_()
    hard = RELAXATIONS[name](s, tau=1.0, hard=True)
    soft = RELAXATIONS[name](s, tau=1.0)
    assert torch.equal(hard.detach(), torch.nn.functional.one_hot(sort_permutation(s), 5).double())
    G = torch.randn(2, 5, 5, dtype=torch.float64)
    (g_hard,) = torch.autograd.grad((hard * G).sum(), s)
    (g_soft,) = torch.autograd.grad((soft * G).sum(), s)
    assert torch.allclose(g_hard, g_soft) and g_soft.abs().sum() > 0


def test_ot_sort_is_doubly_stochastic_and_matches_pot():
    s = scores_64(3, 8, seed=4)
    tau = 0.05
    P = ot_sort(s, tau=tau, n_iters=5000, tol=1e-10)
    assert torch.allclose(P.sum(-2), torch.ones(3, 8, dtype=torch.float64), atol=1e-9)
    uniform = torch.full((8,), 1.0 / 8, dtype=torch.float64)
    anchors = torch.linspace(1.0, 0.0, 8, dtype=torch.float64)
    for b in range(3):
        z = (s[b] - s[b].mean()) / (s[b].std(unbiased=False) + 1e-6)
        cost = (anchors[:, None] - torch.sigmoid(z)[None, :]) ** 2
        ref = ot.sinkhorn(uniform, uniform, cost, tau, numItermax=100_000, stopThr=1e-13)
        assert torch.allclose(P[b], ref * 8, atol=1e-7)


def test_soft_rank_default_avoids_kl_nan_gradients():
    # torchsort issue 63: "kl" at small strength gives NaN; the default "l2" does not.
    s = (10 * scores_64(1, 20, seed=5)).requires_grad_()
    G = torch.randn(1, 20, 20, dtype=torch.float64)
    for tau in (1e-3, 1e-2):
        (g_l2,) = torch.autograd.grad((soft_rank_permutation(s, tau=tau) * G).sum(), s)
        assert torch.isfinite(g_l2).all(), tau
        P_kl = soft_rank_permutation(s, tau=tau, regularization="kl")
        (g_kl,) = torch.autograd.grad((P_kl * G).sum(), s)
        assert not (torch.isfinite(g_kl).all() and torch.isfinite(P_kl).all()), tau


@pytest.mark.parametrize("name", RELAXATIONS)
def test_single_item(name):
    P = RELAXATIONS[name](torch.tensor([[0.3]]), tau=1.0)
    assert torch.equal(P, torch.ones(1, 1, 1))


@pytest.mark.parametrize("name", RELAXATIONS)
def test_bad_input(name):
    fn = RELAXATIONS[name]
    with pytest.raises(ValueError, match="'tau' should be a positive finite number but got 0"):
        fn(scores_64(2, 4), tau=0.0)
    with pytest.raises(TypeError, match="'scores' should be a floating-point tensor"):
        fn(torch.arange(4), tau=1.0)
    with pytest.raises(ValueError, match="'scores' should have N >= 1 items"):
        fn(torch.zeros(2, 0), tau=1.0)


def test_bad_regularization():
    with pytest.raises(ValueError, match="'regularization' should be one of .* but got 'l1'"):
        soft_rank_permutation(scores_64(2, 4), regularization="l1")
