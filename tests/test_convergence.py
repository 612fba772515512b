"""Convergence you can see: the mean marginal error of a soft permutation, what each orderer
reports of it (Sinkhorn-based estimators a float, every other orderer None) and what a run
records in its RunResult."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_runs import tiny

from diffsort_reorder.orders.methods import build_orderer
from diffsort_reorder.run.loop import train
from estimators import create_estimator, list_estimators
from estimators.registry import ESTIMATORS
from estimators.sinkhorn import mean_marginal_error

N = 64  # an 8 x 8 grid
CONVERGED = 0.05  # what a study's report calls converged (study/report/rows.py)
EXACT = 1e-6  # float32 sums of 64 entries
SINKHORN_BASED = {"gumbel_sinkhorn", "ot_sort"}


def test_mean_marginal_error_of_doubly_stochastic_matrices_is_zero():
    permutation = torch.eye(5)[torch.tensor([3, 0, 4, 1, 2])]
    assert float(mean_marginal_error(permutation)) == 0.0
    assert float(mean_marginal_error(torch.full((7, 7), 1 / 7))) == pytest.approx(0.0, abs=EXACT)


def test_mean_marginal_error_by_hand():
    # Rows sum to 0.7, 0.7 (off by 0.3 each: mean 0.3); columns to 0.8, 0.6 (off by 0.2 and 0.4:
    # mean 0.3); the error is the sum of the two means.
    P = torch.tensor([[0.5, 0.2], [0.3, 0.4]], dtype=torch.float64)
    assert float(mean_marginal_error(P)) == pytest.approx(0.6, abs=1e-12)
    # Exact rows, both items at slot 0: columns sum to 2 and 0.
    stacked = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(mean_marginal_error(stacked)) == pytest.approx(1.0)


def test_mean_marginal_error_is_per_matrix_over_leading_dims():
    P = torch.stack([torch.eye(3), torch.ones(3, 3)])  # (2, 3, 3): exact, then every sum 3
    assert torch.allclose(mean_marginal_error(P), torch.tensor([0.0, 4.0]))
    with pytest.raises(ValueError, match="'P' should be square"):
        mean_marginal_error(torch.ones(2, 3))


def perturbed_gumbel_sinkhorn(n_iters: int, tau: float):
    """A gumbel_sinkhorn estimator whose log-alpha has moved off its one-hot init (which every
    Sinkhorn round leaves doubly stochastic), with noise on, as training runs it."""
    est = create_estimator("gumbel_sinkhorn", num_tokens=N, n_iters=n_iters, tau=tau, noise=1.0)
    with torch.no_grad():
        est.log_alpha.add_(torch.randn(N, N, generator=torch.Generator().manual_seed(0)))
    return est


@pytest.mark.parametrize(("n_iters", "tau", "converged"), [(200, 1.0, True), (1, 0.1, False),
                                                           (3, 0.1, False)])  # fmt: skip
def test_gumbel_sinkhorn_error_tracks_iterations_and_tau(n_iters, tau, converged):
    err = perturbed_gumbel_sinkhorn(n_iters, tau).marginal_error()
    assert isinstance(err, float) and (err < CONVERGED) == converged, err


@pytest.mark.parametrize(("n_iters", "tau", "converged"), [(200, 1.0, True), (1, 1e-3, False),
                                                           (3, 1e-3, False)])  # fmt: skip
def test_ot_sort_error_tracks_iterations_and_tau(n_iters, tau, converged):
    err = create_estimator("ot_sort", num_tokens=N, n_iters=n_iters, tau=tau).marginal_error()
    assert isinstance(err, float) and (err < CONVERGED) == converged, err


def test_the_error_follows_the_current_tau():
    est = perturbed_gumbel_sinkhorn(20, 1.0)
    warm = est.marginal_error()
    est.tau = 0.1
    assert est.marginal_error() > warm + 0.01


def test_the_error_is_noise_free_and_leaves_no_graph():
    est = perturbed_gumbel_sinkhorn(3, 0.1)
    first = est.marginal_error()
    assert est.marginal_error() == first  # Gumbel noise is off: deterministic
    assert est.log_alpha.grad is None
    est.hard = True  # straight-through would hide the error; the soft matrix is measured
    assert est.marginal_error() == first


@pytest.mark.parametrize("name", list_estimators())
def test_sinkhorn_based_estimators_answer_a_float_the_others_none(name):
    extra = {"dim": 4} if "dim" in ESTIMATORS[name].extra_required else {}
    est = create_estimator(name, num_tokens=9, **extra)
    err = est.marginal_error()
    if name in SINKHORN_BASED:
        assert isinstance(err, float) and err < CONVERGED  # a fresh one at its default tau
    else:
        assert err is None


def test_saliency_answers_a_float_with_its_ot_sort_relaxation():
    est = create_estimator("saliency", num_tokens=N, dim=4, relaxation="ot_sort", tau=1e-3)
    assert est.marginal_error() > CONVERGED  # ot_sort's default 50 rounds, at tau 1e-3
    est.train()
    out = est(torch.randn(2, N, 4))
    assert float(out.aux["mean_marginal_error"]) >= 0.0


@pytest.mark.parametrize("method", ["row_major", "hilbert"])
def test_fixed_orders_answer_none(method):
    assert build_orderer(method, None, (8, 8)).marginal_error() is None


def test_training_reports_the_mean_error_in_aux():
    est = perturbed_gumbel_sinkhorn(3, 0.1).train()
    aux = est(torch.randn(2, N, 3)).aux
    assert float(aux["mean_marginal_error"]) > CONVERGED  # with noise, as training sees it
    ot = create_estimator("ot_sort", num_tokens=N, n_iters=200, tau=1.0).train()
    assert float(ot(torch.randn(2, N, 3)).aux["mean_marginal_error"]) < CONVERGED


@pytest.mark.parametrize("method", ["gumbel_sinkhorn", "row_major"])
def test_a_run_records_its_orderers_error(tmp_path, method):
    result = train(tiny(tmp_path, f"method={method}", "trainer.epochs=1", "trainer.log_every=1"))
    assert result.finished
    if method == "row_major":
        assert result.marginal_error is None
        return
    assert isinstance(result.marginal_error, float) and math.isfinite(result.marginal_error)
    assert result.to_json()["marginal_error"] == result.marginal_error
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = [e.value for e in events.Scalars("aux/mean_marginal_error")]  # one per step
    assert len(logged) == result.steps and all(math.isfinite(v) for v in logged)
