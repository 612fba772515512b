"""Gradient clipping per parameter group: the orderer's 1/tau-sized score-function gradient
must not shrink the model's clipped gradient."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import tiny

from diffsort_reorder.data import batches, patchify
from diffsort_reorder.run.build import build_run, order_tokens
from diffsort_reorder.run.loop import train, train_step
from diffsort_reorder.run.runtime import seed_everything

POLICY = [
    "trainer.grad_clip=0.5",
    "method=plackett_luce",
    "estimator.options.samples=image",  # per-image advantages are non-zero from the first step
]
TAU = 0.02  # ramp logits 1/15 apart: the sampled order still varies, 1/tau = 50


def policy_run(tmp_path, *overrides):
    seed_everything(0)
    run = build_run(tiny(tmp_path, *POLICY, *overrides))
    run.orderer.train()
    run.orderer.tau = TAU
    return run


def test_model_gradient_is_clipped_without_the_orderer(tmp_path):
    run = policy_run(tmp_path)
    reference = copy.deepcopy(run)
    images, labels = next(batches(run.train_set, 16, None))
    torch.manual_seed(7)
    out, _, _ = train_step(run, images, labels)
    # The orderer's gradient dwarfs the model's: clipped jointly, the model's would shrink 2-5x.
    assert out.aux["grad_norm_orderer"] > 2 * out.aux["grad_norm_model"]
    assert out.aux["grad_norm_model"] > 0.5  # so clipping acts
    # Reference: the task loss alone, the model clipped by trainer.grad_clip alone.
    torch.manual_seed(7)
    ref_out, _ = order_tokens(reference, patchify(images, reference.cfg.data.patch_size))
    assert torch.equal(ref_out.index, out.index)
    logits = reference.model.classify(ref_out.tokens)
    F.cross_entropy(logits.float(), labels).backward()
    torch.nn.utils.clip_grad_norm_(reference.model.parameters(), 0.5)
    for p, q in zip(run.model.parameters(), reference.model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_estimator_grad_clip_clips_the_orderer(tmp_path):
    run = policy_run(tmp_path, "estimator.grad_clip=0.1")
    images, labels = next(batches(run.train_set, 16, None))
    out, _, _ = train_step(run, images, labels)
    assert out.aux["grad_norm_orderer"] > 0.1
    clipped = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in run.orderer.parameters()])
    )
    assert clipped == pytest.approx(0.1, rel=1e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("estimator.grad_clip=-1", "'estimator.grad_clip' should be a number > 0 or null .*-1"),
        ("trainer.grad_clip=0", "'trainer.grad_clip' should be a number > 0 or null .*0"),
        ("trainer.amp=maybe", "'trainer.amp' should be auto, true or false but got 'maybe'"),
    ],
)
def test_bad_clip_or_amp_is_refused_before_training(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(tmp_path, *POLICY, override))
    assert not (tmp_path / "checkpoint.pt").exists()
