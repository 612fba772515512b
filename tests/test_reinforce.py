"""The Plackett-Luce estimator's surrogate over several steps: the EMA baseline against a hand
computation, the surrogate's value and gradient against an independent REINFORCE term, and the
entropy bonus's sign."""

import copy
import itertools
import math

import pytest
import torch

from estimators import create_estimator, plackett_luce_log_prob

N, B = 5, 4
MOMENTUM = 0.9  # far from 0.5, so a momentum on the wrong side of the EMA changes every value
TAU = 0.7
STEPS = 5
TOL = dict(rtol=1e-10, atol=1e-12)  # float64 throughout


def policy(**hparams):
    torch.manual_seed(0)
    est = create_estimator("plackett_luce", num_tokens=N, tau=TAU, **hparams).double().train()
    with torch.no_grad():  # logits that are not a ramp, so every permutation is likely
        est.logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.0, -0.4], dtype=torch.float64))
    return est


def step_losses(step: int) -> torch.Tensor:
    """Per-image task losses of one step ``(B,)``, different every step."""
    return torch.rand(B, generator=torch.Generator().manual_seed(100 + step), dtype=torch.float64)


def reinforce_reference(logits, index, loss, groups, baseline) -> torch.Tensor:
    """``-(1/K) sum_k (R_k - baseline) log p(pi_k)``, with ``R_k`` the mean reward of the images
    that used permutation ``k``; written out per permutation."""
    k = int(groups.max()) + 1
    terms = []
    for g in range(k):
        members = groups == g
        reward = -loss[members].mean()
        (first,) = members.nonzero()[0]
        terms.append((reward - baseline) * plackett_luce_log_prob(logits, index[first], TAU))
    return -torch.stack(terms).sum() / k


@pytest.mark.parametrize(
    "hparams",
    [dict(samples="image"), dict(samples="batch", num_samples=2)],
    ids=["image", "batch2"],
)
def test_ema_baseline_and_surrogate_over_several_steps(hparams):
    est = policy(momentum=MOMENTUM, **hparams)
    tokens = torch.zeros(B, N, 1, dtype=torch.float64)
    expected_baseline = None  # set from the first step's mean reward
    baselines = []
    for step in range(STEPS):
        out = est(tokens)
        loss = step_losses(step)
        mean_reward = float(-loss.mean())
        used = mean_reward if expected_baseline is None else expected_baseline  # before update
        groups = torch.arange(B) % hparams.get("num_samples", B)  # image b: permutation b % K
        for g in range(int(groups.max()) + 1):  # a group's images share its permutation
            assert (out.index[groups == g] == out.index[groups == g][0]).all()
        surrogate = est.surrogate_loss(out, loss)
        logits = est.logits.detach().clone().requires_grad_()
        reference = reinforce_reference(logits, out.index, loss, groups, used)
        torch.testing.assert_close(surrogate, reference, **TOL)
        (grad,) = torch.autograd.grad(surrogate, est.logits)
        (ref_grad,) = torch.autograd.grad(reference, logits)
        torch.testing.assert_close(grad, ref_grad, **TOL)
        if step > 0:
            assert ref_grad.abs().max() > 1e-3  # the advantage is not zero: the test can tell
        # The EMA: b <- m b + (1 - m) mean reward, starting from the first mean reward.
        if expected_baseline is None:
            expected_baseline = mean_reward
        expected_baseline = MOMENTUM * expected_baseline + (1 - MOMENTUM) * mean_reward
        assert float(est.baseline) == pytest.approx(expected_baseline, rel=1e-12, abs=1e-15)
        baselines.append(expected_baseline)
    # The baseline moved after the first step (else the hand EMA checks nothing).
    assert max(baselines) - min(baselines) > 1e-2


def sequential_entropy_reference(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``sum_i H(softmax of the logits not yet drawn / tau)`` along ``index``, one step at a
    time."""
    total = logits.new_zeros(())
    for i in range(N):
        p = torch.softmax(logits[index[i:]] / TAU, -1)
        total = total - (p * p.log()).sum()
    return total


def exact_entropy(logits: torch.Tensor) -> float:
    """The Plackett-Luce distribution's entropy, by enumerating all N! permutations."""
    perms = torch.tensor(list(itertools.permutations(range(N))))  # (N!, N)
    log_p = plackett_luce_log_prob(logits.detach(), perms, TAU)
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    return float(-(log_p.exp() * log_p).sum())


@pytest.mark.parametrize("weight", [0.1, 0.5])
def test_surrogate_is_reinforce_minus_weighted_entropy(weight):
    tokens = torch.zeros(B, N, 1, dtype=torch.float64)
    with_bonus = policy(entropy_weight=weight)
    for step in range(3):  # past the first step, where the advantage is zero
        out = with_bonus(tokens)
        loss = step_losses(step)
        plain = copy.deepcopy(with_bonus)
        plain.entropy_weight = 0.0
        surrogate = with_bonus.surrogate_loss(out, loss)
        reinforce = plain.surrogate_loss(out, loss)
        logits = with_bonus.logits.detach().clone().requires_grad_()
        entropy = sequential_entropy_reference(logits, out.index[0])
        assert float(entropy.detach()) > 0.1
        torch.testing.assert_close(surrogate, reinforce - weight * entropy, **TOL)
        # The gradient too (the bonus's is pathwise: along the sampled permutation, held fixed).
        # (both terms reach the logits through out.log_prob, which the policy's logits made)
        (grad_reinforce,) = torch.autograd.grad(reinforce, with_bonus.logits, retain_graph=True)
        (grad,) = torch.autograd.grad(surrogate, with_bonus.logits)
        (grad_entropy,) = torch.autograd.grad(entropy, logits)
        torch.testing.assert_close(grad, grad_reinforce - weight * grad_entropy, **TOL)


def test_entropy_bonus_gradient_raises_the_entropy():
    """With zero advantage (the first step initialises the baseline to the reward) the surrogate's
    gradient is the entropy bonus's alone: a step against it makes the policy more random, and a
    policy without the bonus gets no gradient at all."""
    tokens = torch.zeros(B, N, 1, dtype=torch.float64)
    for weight in (0.0, 1.0):
        est = policy(entropy_weight=weight)
        out = est(tokens)
        loss = torch.full((B,), 0.7, dtype=torch.float64)  # reward = baseline: no REINFORCE term
        (grad,) = torch.autograd.grad(est.surrogate_loss(out, loss), est.logits)
        if weight == 0.0:
            assert torch.equal(grad, torch.zeros_like(grad))
            continue
        before = exact_entropy(est.logits)
        assert before < 0.95 * math.log(math.factorial(N))  # room to grow
        after = exact_entropy(est.logits.detach() - 0.05 * grad)  # gradient descent
        assert after > before + 1e-3
