"""Plackett-Luce: a proper distribution, samples that follow it at the sampling tau, and a
REINFORCE gradient equal to the exact one."""

import itertools

import pytest
import torch

from estimators import (
    create_estimator,
    plackett_luce_log_prob,
    plackett_luce_sample,
    plackett_luce_sequential_entropy,
)


def all_permutations(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n))))  # (n!, n)


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_probabilities_of_all_orders_sum_to_one(tau):
    logits = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=torch.float64)
    log_p = plackett_luce_log_prob(logits, all_permutations(4), tau=tau)  # (24,)
    assert log_p.shape == (24,)
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_log_prob_by_hand():
    z = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    pi = torch.tensor([1, 0, 2])
    e = (z / 0.5).exp()
    expected = torch.log(e[1] / e.sum()) + torch.log(e[0] / (e[0] + e[2]))
    assert float(plackett_luce_log_prob(z, pi, tau=0.5)) == pytest.approx(float(expected))


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_sample_frequencies_match_probabilities_at_the_sampling_tau(tau):
    logits = torch.tensor([0.8, -0.4, 0.3, 0.0])
    perms = all_permutations(4)
    samples = plackett_luce_sample(
        logits, num_samples=60_000, tau=tau, generator=torch.Generator().manual_seed(0)
    )  # (S, 4)
    codes = (samples * torch.tensor([64, 16, 4, 1])).sum(-1)
    perm_codes = (perms * torch.tensor([64, 16, 4, 1])).sum(-1)
    freq = (codes.unsqueeze(1) == perm_codes.unsqueeze(0)).double().mean(0)  # (24,)
    prob = plackett_luce_log_prob(logits.double(), perms, tau=tau).exp()
    assert (freq - prob).abs().max() < 0.008
    # At another tau the same frequencies would not match: the check can fail.
    other = plackett_luce_log_prob(logits.double(), perms, tau=1.0).exp()
    assert (freq - other).abs().max() > 0.02


def test_samples_are_permutations_with_sample_dim_first():
    logits = torch.randn(3, 7)
    idx = plackett_luce_sample(logits, num_samples=5)
    assert idx.shape == (5, 3, 7)
    assert torch.equal(idx.sort(-1).values, torch.arange(7).expand(5, 3, 7))


def test_reinforce_gradient_matches_exact_gradient_by_enumeration():
    # REOrder bug 3: sampling at tau but scoring at tau = 1 would make these differ.
    tau = 0.6
    torch.manual_seed(0)
    est = create_estimator(
        "plackett_luce", num_tokens=3, tau=tau, samples="image", init_order=torch.tensor([2, 0, 1])
    )
    with torch.no_grad():
        est.logits.copy_(torch.tensor([0.4, -0.3, 0.1]))
    cost = torch.tensor([0.0, 1.0, 2.5, 0.7, -1.0, 1.8])  # a loss for each of the 3! orders
    perms = all_permutations(3)

    def loss_of(index):  # (B, 3) -> (B,)
        return cost[(index.unsqueeze(1) == perms.unsqueeze(0)).all(-1).float().argmax(1)]

    out = est(torch.zeros(200_000, 3, 1))
    est.surrogate_loss(out, loss_of(out.index)).backward()
    reinforce = est.logits.grad.clone()

    logits = est.logits.detach().double().requires_grad_()
    expected_loss = (plackett_luce_log_prob(logits, perms, tau=tau).exp() * cost.double()).sum()
    (exact,) = torch.autograd.grad(expected_loss, logits)
    assert exact.abs().max() > 0.3
    assert torch.allclose(reinforce.double(), exact, atol=0.03), (reinforce, exact)


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_log_prob_gradcheck(tau):
    logits = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    index = torch.stack([torch.randperm(5), torch.randperm(5)])
    assert torch.autograd.gradcheck(lambda z: plackett_luce_log_prob(z, index, tau), (logits,))


def test_sequential_entropy_is_unbiased_for_the_entropy():
    logits = torch.tensor([0.9, -0.2, 0.4], dtype=torch.float64)
    perms = all_permutations(3)
    log_p = plackett_luce_log_prob(logits, perms, tau=0.8)
    entropy = -(log_p.exp() * log_p).sum()
    per_perm = plackett_luce_sequential_entropy(logits, perms, tau=0.8)  # (6,)
    assert float((log_p.exp() * per_perm).sum()) == pytest.approx(float(entropy), abs=1e-12)


def test_bad_input():
    with pytest.raises(TypeError, match="'index' should be a LongTensor"):
        plackett_luce_log_prob(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="'index' should have shape \\(..., 3\\)"):
        plackett_luce_log_prob(torch.zeros(3), torch.arange(4))
    with pytest.raises(ValueError, match="'tau' should be a positive finite number but got -1"):
        plackett_luce_sample(torch.zeros(3), tau=-1.0)
    with pytest.raises(ValueError, match="'num_samples' should be an int >= 1 but got 0"):
        plackett_luce_sample(torch.zeros(3), num_samples=0)
    with pytest.raises(ValueError, match="one device.*'logits' on cpu.*'index' on meta"):
        plackett_luce_log_prob(torch.zeros(3), torch.arange(3, device="meta"))


def test_surrogate_refuses_a_loss_of_the_wrong_shape():
    est = create_estimator("plackett_luce", num_tokens=4, samples="image")
    out = est(torch.randn(5, 4, 2))
    with pytest.raises(ValueError, match="'per_sample_loss' should have one loss per sample"):
        est.surrogate_loss(out, torch.rand(5, 1))  # would broadcast to (5, 5) otherwise
