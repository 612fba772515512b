"""softsort_apply: SoftSort applied in O(N D), against the dense softsort(s) @ x; kernel_apply,
its two-set form, against the dense kernel."""

import math

import pytest
import torch

from estimators import create_estimator, soft_rank_permutation, softsort, softsort_apply
from estimators.matrix_free import (
    CHUNK,
    kernel_apply,
    kernel_apply_ref,
    soft_rank_apply,
    softsort_apply_ref,
    softsort_column_sums,
)

RTOL64 = 1e-8  # float64 scan against float64 dense, relative to the largest entry
ATOL32 = 1e-3  # float32 scan against float64 dense at extreme scores and tau
TAUS = [1.0, 0.1, 0.01, 0.003]


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def problem(n, rows=3, d=4, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(rows, n, generator=g, dtype=torch.float64)).to(dtype)
    x = torch.randn(rows, n, d, generator=g, dtype=torch.float64).to(dtype)
    return s.requires_grad_(), x.requires_grad_()


def grads(fn, s, x, tau, cotangent):
    y = fn(s, x, tau)
    return (y, *torch.autograd.grad(y, (s, x), cotangent))


@pytest.mark.parametrize("n", [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 300, 1000])
@pytest.mark.parametrize("tau", TAUS)
def test_values_and_gradients_match_dense_float64(n, tau):
    s, x = problem(n)
    cotangent = torch.randn(3, n, 4, generator=torch.Generator().manual_seed(9), dtype=s.dtype)
    fast = grads(softsort_apply, s, x, tau, cotangent)
    dense = grads(softsort_apply_ref, s, x, tau, cotangent)
    for name, a, b in zip(("value", "grad scores", "grad x"), fast, dense, strict=True):
        assert rel_err(a, b) < RTOL64, name


def test_reference_is_the_dense_matrix_product():
    s, x = problem(7)
    assert torch.allclose(softsort_apply_ref(s, x, 0.3), softsort(s, 0.3) @ x)


@pytest.mark.parametrize("n", [5, CHUNK + 6])  # one block; two blocks and the carry between them
def test_gradcheck_float64(n):
    s, x = problem(n, rows=2, d=2, scale=0.3)
    assert torch.autograd.gradcheck(lambda s, x: softsort_apply(s, x, 0.2), (s, x))


def test_float32_at_extreme_scores_and_tau_is_finite_and_close_to_float64_dense():
    g = torch.Generator().manual_seed(3)
    s64 = (2 * torch.rand(2, 500, generator=g, dtype=torch.float64) - 1) * 1e3
    x64 = torch.randn(2, 500, 6, generator=g, dtype=torch.float64)
    s32, x32 = s64.float().requires_grad_(), x64.float().requires_grad_()
    y = softsort_apply(s32, x32, 1e-4)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert (y.double() - softsort_apply_ref(s64, x64, 1e-4)).abs().max() < ATOL32
    gs, gx = torch.autograd.grad(y, (s32, x32), torch.randn_like(y))
    assert torch.isfinite(gs).all() and torch.isfinite(gx).all()


def test_float32_where_factorising_the_exponential_overflows():
    # exp(s / tau) is inf for scores in [0, 1] at tau 0.01; differences of sorted scores are not.
    s64, x64 = problem(2000, rows=1, d=3, seed=4)
    s64 = s64.detach().sigmoid()
    y = softsort_apply(s64.float(), x64.detach().float(), 0.01)
    assert torch.isfinite(y).all()
    assert (y.double() - softsort_apply_ref(s64, x64.detach(), 0.01)).abs().max() < ATOL32


def test_batched_equals_per_row():
    s, x = problem(150, rows=3)
    y = softsort_apply(s.view(3, 1, 150), x.view(3, 1, 150, 4), 0.05)
    for r in range(3):
        assert torch.allclose(y[r, 0], softsort_apply(s[r], x[r], 0.05), rtol=0, atol=1e-13)


def test_one_score_vector_orders_a_whole_batch():
    s, x = problem(200, rows=3)
    shared = s[0].detach().requires_grad_()
    y = softsort_apply(shared, x, 0.1)  # (N,) against (B, N, D): one scan over B * D channels
    cotangent = torch.randn_like(y)
    (g_shared,) = torch.autograd.grad(y, shared, cotangent)
    per_row = softsort_apply(shared.expand(3, -1), x, 0.1)
    (g_rows,) = torch.autograd.grad(per_row, shared, cotangent)
    assert torch.allclose(y, per_row, rtol=0, atol=1e-13)
    assert torch.allclose(g_shared, g_rows, rtol=1e-10, atol=1e-13)


def test_all_equal_scores_have_exactly_zero_score_gradient():
    # Dense SoftSort's gradient is exactly zero there (autograd's |0|' = 0): so is the scan's.
    s = torch.zeros(2, 150, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 150, 3, dtype=torch.float64)
    cotangent = torch.randn(2, 150, 3, dtype=torch.float64)
    (g,) = torch.autograd.grad(softsort_apply(s, x, 0.5), s, cotangent)
    (g_dense,) = torch.autograd.grad(softsort_apply_ref(s, x, 0.5), s, cotangent)
    assert torch.equal(g_dense, torch.zeros_like(g))
    assert torch.equal(g, torch.zeros_like(g))


def test_ties_values_match_and_gradients_match_summed_over_each_tie():
    values = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 2.0, 2.0, 2.0, -1.0])
    s = values.repeat(10)[torch.randperm(90, generator=torch.Generator().manual_seed(0))]
    s = s.double().requires_grad_()
    x = torch.randn(90, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cotangent = torch.randn(90, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = softsort_apply(s, x, 0.7)
    (g,) = torch.autograd.grad(y, s, cotangent)
    y_dense = softsort_apply_ref(s, x, 0.7)
    (g_dense,) = torch.autograd.grad(y_dense, s, cotangent)
    assert rel_err(y, y_dense) < RTOL64
    for value in values.unique():  # which tied item gets which row's share differs, not the sum
        tie = s.detach() == value
        assert torch.allclose(g[tie].sum(), g_dense[tie].sum(), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(g, torch.zeros_like(g))


def test_half_precision_input_is_computed_in_float32():
    s, x = problem(300, rows=2, dtype=torch.bfloat16)
    y = softsort_apply(s, x, 0.05)
    assert y.dtype == torch.bfloat16
    exact = softsort_apply(s.detach().float(), x.detach().float(), 0.05)
    assert torch.equal(y, exact.bfloat16())
    y.float().sum().backward()
    assert s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not lower it either
        assert torch.equal(softsort_apply(s.detach().float(), x.detach().float(), 0.05), exact)


def test_backward_keeps_order_n_d_memory():
    n, d = 4096, 8
    s, x = problem(n, rows=1, d=d, dtype=torch.float32)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        softsort_apply(s, x, 0.1)
    assert 0 < sum(saved) <= 8 * n * (d + 1)  # the dense path keeps N^2 = 16.8M numbers


def test_column_sums_match_the_dense_matrix():
    s, _ = problem(500, rows=2)
    for tau in (1.0, 0.01):
        dense = softsort(s.detach(), tau).sum(-2)
        assert torch.allclose(softsort_column_sums(s.detach(), tau), dense, rtol=1e-10)


Z = torch.zeros
POSITIVE = "'tau' should be a positive finite number but got"


@pytest.mark.parametrize(
    ("scores", "x", "tau", "error", "match"),
    [
        (Z(5), Z(4, 2), 1.0, ValueError, "'x' should be \\(..., N, D\\) with N = 5"),
        (Z(5), Z(5), 1.0, ValueError, "'x' should have at least 2 dimension"),
        (Z(5, dtype=torch.long), Z(5, 2), 1.0, TypeError, "'scores' should be a floating-point"),
        (Z(5), Z(5, 2, dtype=torch.int32), 1.0, TypeError, "'x' should be a floating-point"),
        (Z(5), Z(5, 2), 0.0, ValueError, f"{POSITIVE} 0"),
        (Z(5), Z(5, 2), -2.0, ValueError, f"{POSITIVE} -2"),
        (Z(5), Z(5, 2, device="meta"), 1.0, ValueError, "'scores' on cpu, 'x' on meta"),
        (
            Z(2, 5),
            Z(3, 5, 2),
            1.0,
            ValueError,
            "'scores' \\(2,\\) and 'x' \\(3,\\) should broadcast",
        ),
    ],
)
def test_bad_input(scores, x, tau, error, match):
    with pytest.raises(error, match=match):
        softsort_apply(scores, x, tau)


@pytest.mark.parametrize(("m", "n"), [(1, 1), (5, 7), (CHUNK + 3, 300), (300, CHUNK + 3)])
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01])
def test_kernel_apply_matches_the_dense_two_set_kernel(m, n, tau):
    g = torch.Generator().manual_seed(m + n)
    a = torch.randn(2, m, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, n, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(2, n, 3, generator=g, dtype=torch.float64).requires_grad_()
    y, y_ref = kernel_apply(a, b, x, tau), kernel_apply_ref(a, b, x, tau)
    assert y.shape == (2, m, 3) and rel_err(y, y_ref) < RTOL64
    cotangent = torch.randn(y.shape, generator=g, dtype=torch.float64)
    fast = torch.autograd.grad(y, (a, b, x), cotangent)
    dense = torch.autograd.grad(y_ref, (a, b, x), cotangent)
    for name, p, q in zip("abx", fast, dense, strict=True):
        assert rel_err(p, q) < RTOL64, name


def test_kernel_apply_far_from_every_key_is_the_nearest_keys_softmax():
    keys = torch.linspace(0.0, 1.0, 50)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    queries = torch.tensor([40.0, -40.0])  # every weight exp(-gap / 0.01) underflows in float32
    y = kernel_apply(queries, keys, x, 0.01)
    expected = kernel_apply_ref(queries.double() - torch.tensor([39.0, -39.0]).double(),
                                keys.double(), x.double(), 0.01)  # fmt: skip
    assert torch.isfinite(y).all()
    assert torch.allclose(y.double(), expected, atol=1e-5)


def test_soft_rank_apply_matches_the_l1_soft_rank_permutation():
    s = torch.randn(3, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s.requires_grad_()
    x = torch.randn(3, 80, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = soft_rank_apply(s, x, 0.1)
    y_ref = soft_rank_permutation(s, 0.1, kernel="l1") @ x
    assert rel_err(y, y_ref) < RTOL64
    cotangent = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, s, cotangent)
    (g_ref,) = torch.autograd.grad(y_ref, s, cotangent)
    assert rel_err(g, g_ref) < RTOL64


def test_torchsort_estimator_with_the_l1_kernel_applies_above_the_limit():
    tokens = torch.randn(2, 70, 5, generator=torch.Generator().manual_seed(3))
    outs = {}
    for limit in (math.inf, 0):
        torch.manual_seed(0)
        est = create_estimator("torchsort", num_tokens=70, kernel="l1", materialize_limit=limit)
        assert est.soft_path == "apply" and est.applies() == (limit == 0)
        outs[limit] = est(tokens)
    assert outs[0].soft is None and outs[math.inf].soft is not None
    assert torch.allclose(outs[0].tokens, outs[math.inf].tokens, atol=1e-5)
    with pytest.raises(ValueError, match="'materialize_limit' should be >= num_tokens=70"):
        create_estimator("torchsort", num_tokens=70, materialize_limit=0)  # squared: P only


def test_kernel_apply_at_exact_query_key_ties_matches_dense():
    # A query equal to a key: dense autograd's |0|' = 0, the mean of the scan's two sides.
    a = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cotangent = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fast = torch.autograd.grad(kernel_apply(a, b, x, 0.5), (a, b), cotangent)
    dense = torch.autograd.grad(kernel_apply_ref(a, b, x, 0.5), (a, b), cotangent)
    for p, q in zip(fast, dense, strict=True):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tau", [0.1, 1e-3])
def test_float32_gradients_are_close_to_float64_dense(tau):
    s64, x64 = problem(2000, rows=1, d=4, seed=6)
    cotangent = torch.randn(1, 2000, 4, dtype=torch.float64, generator=torch.Generator())
    s32, x32 = s64.detach().float().requires_grad_(), x64.detach().float().requires_grad_()
    g32 = torch.autograd.grad(softsort_apply(s32, x32, tau), (s32, x32), cotangent.float())
    g64 = torch.autograd.grad(softsort_apply_ref(s64, x64, tau), (s64, x64), cotangent)
    assert rel_err(g32[0].double(), g64[0]) < 1e-4  # scores (2e-7 measured)
    assert rel_err(g32[1].double(), g64[1]) < 1e-3  # tokens (3e-5 measured)


def test_backward_under_autocast_still_computes_in_float32():
    s, x = problem(300, rows=2, dtype=torch.float32)
    cotangent = torch.randn(2, 300, 4)
    (plain,) = torch.autograd.grad(softsort_apply(s, x, 0.05), s, cotangent)
    y = softsort_apply(s, x, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a backward called inside autocast
        (mixed,) = torch.autograd.grad(y, s, cotangent)
    assert torch.equal(plain, mixed)


def test_frozen_inputs_get_no_gradient_work():
    s, x = problem(100, rows=1)
    y = softsort_apply(s.detach(), x, 0.1)  # scores frozen: only x's gradient
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.allclose(gx.sum(), torch.tensor(float(y.numel()), dtype=gx.dtype))  # rows sum to 1
