"""Sinkhorn: against the plain log-domain reference and POT, both backward modes, stability."""

import warnings

import ot
import pytest
import torch

from estimators import (
    SinkhornConvergenceWarning,
    SinkhornFallbackWarning,
    create_estimator,
    gumbel_sinkhorn,
    marginal_error,
    sinkhorn,
    sinkhorn_ref,
)
from estimators.sinkhorn import _fallbacks, fallback_count

ATOL64 = 1e-10  # float64 agreement between two exact evaluations of the same iterations
ATOL_POT = 1e-5  # our converged plan vs POT's, float32 inputs
TAUS = [0.3, 1.0, 5.0]


@pytest.mark.parametrize("backward", ["unrolled", "implicit"])
@pytest.mark.parametrize("n_iters", [1, 2, 7, 30])
def test_matches_log_domain_reference(n_iters, backward):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 6, dtype=torch.float64, requires_grad=True)
    P, R = sinkhorn(x, n_iters=n_iters, backward=backward), sinkhorn_ref(x, n_iters=n_iters)
    assert torch.allclose(P, R, atol=ATOL64, rtol=0)
    if backward == "unrolled":  # the exact gradient of the iterations that ran
        G = torch.randn_like(P)
        (gp,) = torch.autograd.grad((P * G).sum(), x)
        (gr,) = torch.autograd.grad((R * G).sum(), x)
        assert torch.allclose(gp, gr, atol=ATOL64, rtol=0)


def test_implicit_gradient_matches_unrolled_once_converged():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 8, dtype=torch.float64, requires_grad=True)
    P_u = sinkhorn(x, n_iters=500)
    P_i = sinkhorn(x, n_iters=500, backward="implicit")
    assert float(marginal_error(P_u.detach()).max()) < 1e-12
    G = torch.randn_like(P_u)
    (g_u,) = torch.autograd.grad((P_u * G).sum(), x)
    (g_i,) = torch.autograd.grad((P_i * G).sum(), x)
    assert torch.allclose(g_u, g_i, atol=1e-10, rtol=0)
    # ... and not before: after 3 rounds the two gradients differ.
    P3_u, P3_i = sinkhorn(x, n_iters=3), sinkhorn(x, n_iters=3, backward="implicit")
    (g3_u,) = torch.autograd.grad((P3_u * G).sum(), x)
    (g3_i,) = torch.autograd.grad((P3_i * G).sum(), x)
    assert (g3_u - g3_i).abs().max() > 1e-4


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("backward", ["unrolled", "implicit"])
def test_gradcheck(tau, backward):
    torch.manual_seed(2)
    x = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    n_iters = 15 if backward == "unrolled" else 2000  # implicit is the fixed point's gradient
    assert torch.autograd.gradcheck(
        lambda a: sinkhorn(a / tau, n_iters=n_iters, backward=backward), (x,), atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_pot_once_converged(dtype):
    torch.manual_seed(3)
    x = torch.randn(4, 12, 12, dtype=dtype)
    P = sinkhorn(x, n_iters=1000, tol=1e-7 if dtype == torch.float64 else 1e-6)
    uniform = torch.full((12,), 1.0 / 12, dtype=torch.float64)
    for b in range(4):
        ref = ot.sinkhorn(uniform, uniform, -x[b].double(), 1.0, numItermax=5000, stopThr=1e-12)
        assert torch.allclose(P[b].double(), ref * 12, atol=ATOL_POT, rtol=0)


def test_doubly_stochastic_and_batched_over_leading_dims():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 7, 7)
    P = sinkhorn(x, n_iters=200)
    assert P.shape == (2, 3, 7, 7)
    assert torch.allclose(P.sum(-1), torch.ones(2, 3, 7), atol=1e-5)
    assert torch.allclose(P.sum(-2), torch.ones(2, 3, 7), atol=1e-5)
    per_matrix = torch.stack([sinkhorn(m, n_iters=200) for m in x.reshape(6, 7, 7)])
    assert torch.allclose(P.reshape(6, 7, 7), per_matrix, atol=1e-6)
    unbatched = sinkhorn(x[1, 2], n_iters=200)
    assert unbatched.shape == (7, 7) and torch.allclose(unbatched, P[1, 2], atol=1e-6)


@pytest.mark.filterwarnings("ignore::estimators.SinkhornFallbackWarning")  # it falls back
@pytest.mark.parametrize("backward", ["unrolled", "implicit"])
def test_finite_at_tiny_tau_and_huge_log_alpha(backward):
    torch.manual_seed(5)
    log_alpha = (1e3 * torch.randn(4, 32, 32)).requires_grad_()
    P = gumbel_sinkhorn(log_alpha, tau=1e-3, n_iters=20, noise=0.0, backward=backward)
    (P * torch.randn_like(P)).sum().backward()
    assert torch.isfinite(P).all() and torch.isfinite(log_alpha.grad).all()
    assert torch.allclose(P.sum(-1), torch.ones(4, 32), atol=1e-4)  # rows exact after a round


def test_warns_when_tol_not_reached_and_stops_early_when_reached():
    torch.manual_seed(6)
    x = 20 * torch.randn(2, 10, 10, dtype=torch.float64)
    with pytest.warns(SinkhornConvergenceWarning, match="n_iters=3"):
        sinkhorn(x, n_iters=3, tol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P = sinkhorn(torch.randn(2, 10, 10, dtype=torch.float64), n_iters=10_000, tol=1e-9)
    assert float(marginal_error(P).max()) < 1e-9


def test_gumbel_sinkhorn_noise_and_seed():
    torch.manual_seed(7)
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    assert torch.allclose(
        gumbel_sinkhorn(x, tau=0.5, noise=0.0), sinkhorn(x / 0.5), atol=ATOL64, rtol=0
    )
    a = gumbel_sinkhorn(x, tau=0.5, generator=torch.Generator().manual_seed(1))
    b = gumbel_sinkhorn(x, tau=0.5, generator=torch.Generator().manual_seed(1))
    c = gumbel_sinkhorn(x, tau=0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("tau", TAUS)
def test_gumbel_sinkhorn_gradcheck(tau):
    x = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda a: gumbel_sinkhorn(a, tau, 10, generator=torch.Generator().manual_seed(0))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), atol=1e-6)


def test_n_equals_one():
    assert torch.equal(sinkhorn(torch.randn(3, 1, 1)), torch.ones(3, 1, 1))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(log_alpha=torch.zeros(3, 4, 5)), ValueError, "square.*\\(3, 4, 5\\)"),
        (dict(log_alpha=torch.zeros(4)), ValueError, "at least 2 dimension"),
        (dict(log_alpha=torch.zeros(2, 0, 0)), ValueError, "N >= 1"),
        (dict(log_alpha=torch.zeros(4, 4, dtype=torch.long)), TypeError, "floating-point.*int64"),
        (dict(log_alpha=[[0.0]]), TypeError, "torch.Tensor but got list"),
        (
            dict(log_alpha=torch.zeros(4, 4), n_iters=0),
            ValueError,
            "'n_iters' should be an int >= 1",
        ),
        (dict(log_alpha=torch.zeros(4, 4), backward="adjoint"), ValueError, "'backward'.*adjoint"),
        (dict(log_alpha=torch.zeros(4, 4), tol=-1.0), ValueError, "'tol' should be a positive"),
    ],
)
def test_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        sinkhorn(**kwargs)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="'tau' should be a positive finite number"):
        gumbel_sinkhorn(torch.zeros(3, 3), tau=tau)


@pytest.mark.parametrize("seed", range(6))
def test_long_runs_on_hard_inputs_stay_finite_and_exact(seed):
    # Left alone, the two scalings drift apart and overflow after ~100 rounds on such inputs;
    # balanced, their ranges reach 1e69 each here, which a gauge pinning max v at 1 would have
    # pushed into u alone (1e139, past what the backward can square).
    g = torch.Generator().manual_seed(seed)
    x = (2.0 * torch.randn(2, 8, 8, generator=g, dtype=torch.float64) / 0.01).requires_grad_()
    before = fallback_count()
    P = sinkhorn(x, n_iters=300)
    assert fallback_count() == before  # the scaling path ran, not the reference it is checked by
    R = sinkhorn_ref(x, n_iters=300)
    assert torch.isfinite(P).all() and torch.allclose(P, R, atol=1e-8)
    G = torch.randn(2, 8, 8, generator=g, dtype=torch.float64)
    (gp,) = torch.autograd.grad((P * G).sum(), x)
    (gr,) = torch.autograd.grad((R * G).sum(), x)
    assert torch.isfinite(gp).all() and torch.allclose(gp, gr, atol=1e-8, rtol=1e-6)


def test_rows_sum_to_one_exactly_and_columns_within_the_marginal_error():
    x = 10.0 * torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    P = sinkhorn(x, n_iters=5)
    assert torch.allclose(P.sum(-1), torch.ones(3, 16), atol=1e-5)
    err = marginal_error(P)
    assert err.max() > 1e-3  # not converged after 5 rounds: the columns carry the error
    assert torch.allclose((P.sum(-2) - 1).abs().amax(-1), err, atol=1e-5)


@pytest.mark.parametrize("backward", ["unrolled", "implicit"])
def test_autocast_bfloat16_runs_in_float32(backward):
    x = torch.randn(2, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        P = gumbel_sinkhorn(x, tau=0.5, n_iters=10, backward=backward)
        out = P @ torch.randn(2, 6, 3)
    out.float().sum().backward()
    assert P.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_second_derivatives_are_refused_not_wrong():
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(sinkhorn(x, n_iters=5).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|not differentiable twice"):
        g.sum().backward()


def test_past_what_the_backward_can_square_it_falls_back_and_stays_exact():
    # At this scale seed 0's scalings need a range of 1e163 each, past the 1e77 whose squares
    # the unrolled backward can hold in float64: the call re-runs in the log domain, counted.
    g = torch.Generator().manual_seed(0)
    x = (3.0 * torch.randn(2, 8, 8, generator=g, dtype=torch.float64) / 0.01).requires_grad_()
    before = fallback_count()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornFallbackWarning)
        P = sinkhorn(x, n_iters=300)
    assert fallback_count() == before + 1
    assert torch.allclose(P, sinkhorn_ref(x, n_iters=300), atol=1e-8)
    (grad,) = torch.autograd.grad(P.sum(), x)
    assert torch.isfinite(grad).all()


def estimator_like_log_alpha(n, seed, batch=16):
    """What the gumbel_sinkhorn estimator feeds Sinkhorn: a one-hot init plus what training adds."""
    g = torch.Generator().manual_seed(seed)
    one_hot = torch.eye(n)[torch.randperm(n, generator=g)]
    return (one_hot + 0.5 * torch.randn(n, n, generator=g)).expand(batch, n, n).clone(), g


@pytest.mark.parametrize("n", [64, 196])
@pytest.mark.parametrize("tau", [0.1, 0.05])
def test_float32_gumbel_sinkhorn_stays_on_the_scaling_path(n, tau):
    # A gauge that pins max v at 1 pushed the whole range into u: 4/5 seeds fell back to the
    # log domain at N=196, tau 0.1, and 5/5 at tau 0.05.
    before = fallback_count()
    for seed in range(5):
        log_alpha, g = estimator_like_log_alpha(n, seed)
        log_alpha.requires_grad_()
        P = gumbel_sinkhorn(log_alpha, tau, n_iters=20, noise=1.0, generator=g)
        (P * torch.randn(P.shape, generator=g)).sum().backward()
        assert torch.isfinite(P).all() and torch.isfinite(log_alpha.grad).all()
    assert fallback_count() == before


def test_a_fallback_is_counted_and_warned_once(monkeypatch):
    monkeypatch.setitem(_fallbacks, "count", 0)  # as in a fresh process
    torch.manual_seed(5)
    log_alpha = 1e3 * torch.randn(4, 32, 32)  # overflows the scalings at tau 1e-3
    with pytest.warns(SinkhornFallbackWarning, match="re-ran in the log domain"):
        P = gumbel_sinkhorn(log_alpha, tau=1e-3, noise=0.0)
    assert torch.isfinite(P).all() and fallback_count() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gumbel_sinkhorn(log_alpha, tau=1e-3, noise=0.0)
    assert fallback_count() == 2


def test_estimators_report_fallbacks_in_aux():
    torch.manual_seed(5)
    est = create_estimator("gumbel_sinkhorn", num_tokens=32, noise=0.0)
    out = est(torch.randn(2, 32, 3))
    assert float(out.aux["log_domain_fallbacks"]) == 0
    torch.manual_seed(5)
    with torch.no_grad():  # the third of test_a_fallback_is_counted_and_warned_once's inputs
        est.log_alpha.copy_(1e3 * torch.randn(4, 32, 32)[2])
    est.tau = 1e-3  # beyond what the scalings can follow
    out = est(torch.randn(2, 32, 3))
    assert float(out.aux["log_domain_fallbacks"]) == 1 and torch.isfinite(out.tokens).all()
    ot = create_estimator("ot_sort", num_tokens=12)
    assert float(ot(torch.randn(2, 12, 3)).aux["log_domain_fallbacks"]) == 0
