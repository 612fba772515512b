"""The three bugs in REOrder's released code (DESIGN.md), each shown absent here."""

import torch

from diffsort_reorder.run.schedules import tau_at
from estimators import create_estimator, plackett_luce_log_prob, ramp_scores


def test_bug1_temperature_schedule_is_stepped_per_step():
    # Policy phase of 30 epochs x 50 steps, triangular 0 -> 0.2 -> 0, advanced every step.
    total = 30 * 50
    taus = [tau_at(step, total, "triangular", tau_max=0.2) for step in range(total)]
    assert max(taus) > 0.199  # REOrder stepped it per epoch: its peak was ~0.002
    assert abs(taus.index(max(taus)) - total // 2) <= 1
    assert taus[0] == 0.0 and taus[-1] == 0.0
    # Stepping once per epoch (the bug) would reach only epoch/total of the way up.
    assert max(tau_at(epoch, total, "triangular", tau_max=0.2) for epoch in range(30)) < 0.01


def test_bug2_initial_logits_sort_to_the_order_not_its_inverse():
    order = torch.tensor([2, 0, 3, 1, 4])  # order != its inverse [1, 3, 0, 2, 4]
    assert not torch.equal(order.argsort(), order)
    scores = ramp_scores(order)
    assert torch.equal(scores.argsort(descending=True), order)
    buggy = torch.linspace(0.0, -1.0, 5)[order]  # REOrder's `ramp[P]`
    assert torch.equal(buggy.argsort(descending=True), order.argsort())  # ... is the inverse
    est = create_estimator("plackett_luce", num_tokens=5, init_order=order).eval()
    assert torch.equal(est.order(), order)


def test_bug3_log_prob_is_taken_at_the_sampling_tau():
    torch.manual_seed(0)
    est = create_estimator("plackett_luce", num_tokens=6, tau=0.2, samples="image")
    out = est(torch.randn(8, 6, 3))
    expected = plackett_luce_log_prob(est.logits, out.index, tau=0.2)
    assert torch.allclose(out.log_prob, expected)
    at_one = plackett_luce_log_prob(est.logits, out.index, tau=1.0)  # REOrder's
    assert not torch.allclose(out.log_prob, at_one)
