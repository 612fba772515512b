"""REOrder's curriculum in the training loop: the orderer trains only in the policy phase (the
fixed and frozen phases apply its hard order, and leave it unchanged), tau follows the schedule
step by step, and a resumed run restores the tau its last finished epoch ended at."""

import pytest
import torch
from tiny_runs import tiny

from diffsort_reorder.files import load
from diffsort_reorder.run import loop as train_module
from diffsort_reorder.run.build import prepare_run
from diffsort_reorder.run.loop import train
from diffsort_reorder.run.schedules import tau_at

# One epoch per phase: fixed, policy, frozen; 64 images in batches of 16 -> 4 steps per epoch.
CURRICULUM = [
    "method=softsort",
    "trainer.epochs=3",
    "trainer.curriculum.fixed_epochs=1",
    "trainer.curriculum.policy_epochs=1",
]
STEPS = 4
PHASES = ["fixed", "policy", "frozen"]


def test_orderer_trains_only_in_the_policy_phase(tmp_path, monkeypatch):
    real_step = train_module.train_step
    seen = []

    def recording_step(run, images, labels, epoch=0, step=0):
        before = run.orderer.scores.detach().clone()
        state = {"epoch": epoch, "step": step, "orderer": run.orderer.training,
                 "model": run.model.training, "tau": run.orderer.tau}  # fmt: skip
        out, logits, per_sample = real_step(run, images, labels, epoch, step)
        state["soft"] = out.soft is not None
        state["moved"] = not torch.equal(run.orderer.scores.detach(), before)
        seen.append(state)
        return out, logits, per_sample

    monkeypatch.setattr(train_module, "train_step", recording_step)
    cfg = tiny(tmp_path, *CURRICULUM)
    result = train(cfg)
    assert result.finished and [s["step"] for s in seen] == list(range(3 * STEPS))
    for s in seen:
        policy = PHASES[s["epoch"]] == "policy"
        assert s["orderer"] == policy, s  # eval (the hard order) in the fixed and frozen phases
        assert s["soft"] == policy, s  # softsort's relaxation only while it learns
        assert s["moved"] == policy, s  # its scores step only while it learns
        assert s["model"], s  # the model trains in every phase
    est = cfg.estimator.tau
    policy_taus = [s["tau"] for s in seen if s["epoch"] == 1]
    expected = [tau_at(k, STEPS, est.schedule, est.max, est.min) for k in range(STEPS)]
    assert policy_taus == pytest.approx(expected, rel=1e-12)
    assert all(s["tau"] == expected[-1] for s in seen if s["epoch"] == 2)  # frozen: tau kept


def test_resume_restores_tau_from_the_checkpoint(tmp_path):
    cut = tiny(tmp_path, *CURRICULUM, "trainer.stop_after_epochs=2")  # after the policy epoch
    run = prepare_run(cut)
    assert train(cut, run=run).epochs == 2
    est = cut.estimator.tau
    last_policy_tau = tau_at(STEPS - 1, STEPS, est.schedule, est.max, est.min)
    assert run.orderer.tau == pytest.approx(last_policy_tau, rel=1e-12)
    assert load(tmp_path / "checkpoint.pt")["tau"] == run.orderer.tau
    resumed_cfg = tiny(tmp_path, *CURRICULUM)
    resumed = prepare_run(resumed_cfg)
    assert resumed.orderer.tau != pytest.approx(last_policy_tau)  # a fresh orderer's tau
    result = train(resumed_cfg, run=resumed)
    assert result.finished and result.epochs == 3
    # The frozen epoch sets no tau: the orderer keeps the one the checkpoint restored.
    assert resumed.orderer.tau == pytest.approx(last_policy_tau, rel=1e-12)
    assert load(tmp_path / "checkpoint.pt")["tau"] == pytest.approx(last_policy_tau, rel=1e-12)
