"""Mixed precision computes what float32 computes: every estimator under CPU bf16 autocast, and
one training run per kind of method with ``trainer.amp=true`` on the CPU."""

import importlib.resources
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tiny_runs import tiny

from diffsort_reorder.run.build import build_run
from diffsort_reorder.run.loop import train, train_step
from diffsort_reorder.run.runtime import use_amp
from estimators import create_estimator, list_estimators
from estimators.registry import ESTIMATORS
from estimators.saliency import RELAXATIONS

SOFT_TOL = 2e-2  # max |P_bf16 - P_fp32|
LOG_PROB_TOL = 1e-2  # nats, for the same permutation
LOSS_TOL = 1e-6  # nats: the per-sample loss against float32 cross-entropy of the same logits
CONFIGS = importlib.resources.files("diffsort_reorder.configs")
B, N, F_IN, D = 4, 196, 8, 16  # N as a 14x14 grid: bf16 cannot tell ramp scores 1/195 apart


def smallest_tau(name: str) -> float:
    """The smallest temperature the estimator's config anneals to: where bf16 hurts most."""
    return float(OmegaConf.load(str(CONFIGS / "estimator" / f"{name}.yaml")).tau.min)


def make(name: str, **hparams):
    torch.manual_seed(0)
    if "dim" in inspect.signature(ESTIMATORS[name]).parameters:
        hparams.setdefault("dim", D)
        hparams.setdefault("feature_blocks", 0)
    init = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    return create_estimator(name, num_tokens=N, init_order=init, tau=smallest_tau(name), **hparams)


def both_precisions(est):
    """The estimator's training output on tokens from a Linear layer, in float32 and under bf16
    autocast, with the same sampling seed."""
    linear = torch.nn.Linear(F_IN, D)
    x = torch.randn(B, N, F_IN, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    full = est(linear(x))
    with torch.autocast("cpu", torch.bfloat16):
        tokens = linear(x)
        assert tokens.dtype == torch.bfloat16  # the setting the GPU path runs in
        torch.manual_seed(3)
        mixed = est(tokens)
    return full, mixed


def applies_by_default(name: str) -> bool:
    """Whether estimator ``name`` with its default options applies P without forming it when
    asked to (``materialize_limit=0``); the others refuse."""
    try:
        return make(name, materialize_limit=0).applies()
    except ValueError:
        return False


CASES = (
    [(name, {}) for name in list_estimators()]
    + [
        ("saliency", {"relaxation": relaxation})
        for relaxation in RELAXATIONS
        if relaxation != "softsort"
    ]
    + [(name, {"materialize_limit": 0}) for name in list_estimators() if applies_by_default(name)]
)  # applied, no P


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=lambda v: str(v or ""))
def test_bf16_autocast_computes_the_float32_permutation(name, hparams):
    est = make(name, **hparams).train()
    if name == "gumbel_sinkhorn":  # a one-hot log-alpha is exact in bf16: make it matter
        est.log_alpha.data.normal_(generator=torch.Generator().manual_seed(4))
    full, mixed = both_precisions(est)
    assert torch.equal(full.index, mixed.index)
    assert (full.soft is None) == (mixed.soft is None)
    # A global estimator's permutation depends on its float32 parameters alone: bit for bit.
    # A per-image one scores the tokens, which autocast itself rounds to bf16.
    exact = ESTIMATORS[name].is_global
    if full.soft is not None:
        assert mixed.soft.dtype == torch.float32
        diff = (mixed.soft - full.soft).abs().max()
        assert diff == 0 if exact else diff < SOFT_TOL
    if full.log_prob is not None:
        assert mixed.log_prob.dtype == torch.float32
        diff = (mixed.log_prob - full.log_prob).abs().max()
        assert diff == 0 if exact else diff < LOG_PROB_TOL
    if est.applies():  # no P to compare: the tokens, within bf16's rounding of them
        assert full.soft is None and full.log_prob is None
        scale = full.tokens.abs().max()
        assert (mixed.tokens.float() - full.tokens).abs().max() < SOFT_TOL * scale


@pytest.mark.parametrize("name", list_estimators())
def test_bf16_autocast_backward_gives_float32_gradients(name):
    est = make(name).train()
    with torch.autocast("cpu", torch.bfloat16):
        tokens = torch.nn.Linear(F_IN, D)(torch.randn(B, N, F_IN))
        out = est(tokens)
        per_sample = out.tokens.float().pow(2).mean((1, 2))  # (B,)
    (per_sample.mean() + est.surrogate_loss(out, per_sample)).backward()
    grads = [p.grad for p in est.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    est.eval()
    with torch.autocast("cpu", torch.bfloat16):
        assert torch.equal(est(tokens).index[0], est.order())


def test_amp_setting():
    assert use_amp("auto", torch.device("cpu")) is False
    assert use_amp("auto", torch.device("cuda")) is True
    assert use_amp(True, torch.device("cpu")) is True
    with pytest.raises(ValueError, match="'trainer.amp' should be auto, true or false but got 1"):
        use_amp(1, torch.device("cpu"))


CURRICULUM = ["trainer.epochs=2", "trainer.curriculum.fixed_epochs=1"]


# One per kind: scan, prior, training-free probe, pathwise, score-function, doubly stochastic,
# per-image learned.
@pytest.mark.parametrize(
    "method",
    ["hilbert", "compression_prior", "saliency_gradient", "softsort", "plackett_luce",
     "gumbel_sinkhorn", "saliency"],
)  # fmt: skip
def test_amp_training_run_on_cpu(tmp_path, method):
    result = train(tiny(tmp_path, *CURRICULUM, f"method={method}", "trainer.amp=true"))
    assert result.finished and math.isfinite(result.val_loss)
    reference = train(tiny(tmp_path / "fp32", *CURRICULUM, f"method={method}"))
    # bf16 training is not bit-identical, but it learns the same task on the same data.
    assert abs(result.val_loss - reference.val_loss) < 0.5


def test_the_loss_under_bf16_is_taken_on_float32_logits(tmp_path):
    """The model runs in bf16, but its per-sample loss (and the REINFORCE reward it becomes) is
    the cross-entropy of the logits upcast to float32: bf16's 8 bits of mantissa would round
    every loss near 2 nats by up to 0.008."""
    run = build_run(tiny(tmp_path, "method=row_major", "trainer.amp=true"))
    images, labels = run.train_set.images[:16], run.train_set.labels[:16]
    _, logits, per_sample = train_step(run, images, labels)
    assert logits.dtype == torch.bfloat16  # autocast ran the model
    assert per_sample.dtype == torch.float32
    full = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    assert (per_sample - full).abs().max() < LOSS_TOL
    rounded = F.cross_entropy(logits, labels, reduction="none")  # bf16 throughout
    assert (rounded.float() - full).abs().max() > 100 * LOSS_TOL  # what the upcast keeps
