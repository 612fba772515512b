"""Learning-rate schedules: the model's restarts for the frozen phase so that the re-adaptation
after a learned order is frozen gets a fair share of the learning rate (``trainer.lr_restart``),
``none`` is the one warm-up + cosine of before; the orderer follows its own schedule over the
policy phase (``trainer.policy``), never the model's; ``lr_mass`` is what a run records."""

import math

import pytest
from omegaconf import OmegaConf
from tiny_runs import tiny

from diffsort_reorder.config import compose_config
from diffsort_reorder.data.loading import batch_order
from diffsort_reorder.run import loop as train_module
from diffsort_reorder.run.checks import check_config
from diffsort_reorder.run.loop import train
from diffsort_reorder.run.schedules import (
    lr_factor,
    lr_mass,
    model_lr,
    policy_lr_factor,
    restarted_lr_factor,
)

FAIR_FROZEN_SHARE = 0.20  # the least share of the model's LR mass the frozen phase gets by default
OLD_FROZEN_SHARE = (0.02, 0.05)  # what one cosine over all epochs leaves it under trainer=study
EXACT = 1e-12


def study_trainer(*overrides):
    """``trainer=study`` (8 epochs: 2 fixed, 4 policy, 2 frozen) and its steps per epoch on the
    default data, as ``build_run`` counts them."""
    cfg = compose_config(["trainer=study", "method=softsort", *overrides])
    steps = len(batch_order(cfg.data.options.num_train, cfg.trainer.batch_size, None))
    return cfg.trainer, steps


def test_the_study_trainer_gives_the_frozen_phase_a_fair_share_by_default():
    trainer, steps = study_trainer()
    assert trainer.lr_restart == "frozen"
    assert (trainer.epochs, trainer.curriculum.fixed_epochs, trainer.curriculum.policy_epochs) == (
        8, 2, 4
    )  # fmt: skip
    mass = lr_mass(trainer, steps)
    assert sum(mass.values()) == pytest.approx(1.0, abs=EXACT)
    assert mass["frozen"] >= FAIR_FROZEN_SHARE, mass
    # The restart: the frozen phase's first step starts a fresh warm-up from near 0.
    factor, restart = model_lr(trainer, steps), 6 * steps
    assert factor(restart) < 0.1
    assert max(factor(s) for s in range(restart, 8 * steps)) == pytest.approx(1.0)


def test_no_restart_is_the_old_schedule_at_every_step():
    trainer, steps = study_trainer("trainer.lr_restart=none")
    mass = lr_mass(trainer, steps)
    low, high = OLD_FROZEN_SHARE
    assert low < mass["frozen"] < high, mass
    factor = model_lr(trainer, steps)
    total, warmup = trainer.epochs * steps, trainer.warmup_epochs * steps
    assert all(factor(s) == lr_factor(s, warmup, total) for s in range(total))  # bit for bit


@pytest.mark.parametrize("restart", ["frozen", "none"])
@pytest.mark.parametrize(
    ("epochs", "warmup", "fixed", "policy"),
    [(8, 1, 2, 4), (12, 1, 2, 6), (3, 0, 1, 1), (5, 2, 0, 5)],
)
@pytest.mark.parametrize("steps", [1, 7])
def test_lr_mass_sums_to_one(restart, epochs, warmup, fixed, policy, steps):
    trainer = OmegaConf.create({
        "epochs": epochs, "warmup_epochs": warmup, "lr_restart": restart,
        "curriculum": {"fixed_epochs": fixed, "policy_epochs": policy},
    })  # fmt: skip
    mass = lr_mass(trainer, steps)
    assert set(mass) == {"fixed", "policy", "frozen"}
    assert sum(mass.values()) == pytest.approx(1.0, abs=EXACT)
    assert all(share >= 0 for share in mass.values())
    assert (mass["frozen"] == 0) == (fixed + policy == epochs)
    assert (mass["fixed"] == 0) == (fixed == 0)


def test_restarted_factor_is_two_warm_up_cosines():
    warmup, total, restart = 10, 100, 60
    for step in range(restart):
        assert restarted_lr_factor(step, warmup, total, restart) == lr_factor(step, warmup, restart)
    # The frozen part's warm-up takes the same share of it: 10 / 60 of 40 steps -> 7 steps.
    for step in range(restart, total):
        expected = lr_factor(step - restart, 7, total - restart)
        assert restarted_lr_factor(step, warmup, total, restart) == expected
    # No part to restart: the one schedule.
    for restart in (0, total):
        assert all(
            restarted_lr_factor(s, warmup, total, restart) == lr_factor(s, warmup, total)
            for s in range(total)
        )


def reference_policy_factor(step, start, length, warmup, kind):
    """The orderer's factor written out: warm-up from ~0, then 1 or a cosine over the phase."""
    k = min(max(step - start, 0), length - 1)
    if k < warmup:
        return (k + 1) / warmup
    if kind == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (k - warmup) / (length - warmup)))


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_the_policy_warm_up_ramps_from_zero(kind):
    start, length, warmup = 50, 400, 100
    factors = [policy_lr_factor(s, start, length, warmup, kind) for s in range(500)]
    assert factors[start] == pytest.approx(0.01) and factors[start - 1] == factors[start]
    ramp = factors[start : start + warmup]
    assert all(b - a == pytest.approx(1 / warmup) for a, b in zip(ramp[:-1], ramp[1:], strict=True))
    assert factors[start + warmup] == pytest.approx(1.0)
    expected = [reference_policy_factor(s, start, length, warmup, kind) for s in range(500)]
    assert factors == pytest.approx(expected, rel=EXACT)
    end = factors[start + length - 1]
    assert end == 1.0 if kind == "constant" else end < 1e-3


def test_no_policy_warm_up_and_constant_is_one_at_every_step():
    assert all(policy_lr_factor(s, 8, 16) == 1.0 for s in range(40))
    with pytest.raises(ValueError, match="unknown policy lr schedule 'linear'; available: "):
        policy_lr_factor(0, 0, 4, kind="linear")


# 64 images in batches of 16 -> 4 steps per epoch: 1 fixed epoch, 2 policy, 1 frozen.
STEPS = 4
POLICY_RUN = [
    "method=softsort",
    "trainer.epochs=4",
    "trainer.warmup_epochs=1",
    "trainer.curriculum.fixed_epochs=1",
    "trainer.curriculum.policy_epochs=2",
]


def recorded_lrs(tmp_path, monkeypatch, *overrides):
    """Train the tiny policy run; returns its config, its result and the learning rates of each
    parameter group at every step, as the optimizer used them."""
    real_step, seen = train_module.train_step, []

    def recording_step(run, images, labels, epoch=0, step=0):
        seen.append((step, run.scheduler.get_last_lr()))
        return real_step(run, images, labels, epoch, step)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    cfg = tiny(tmp_path, *POLICY_RUN, *overrides)
    result = train(cfg)
    assert result.finished and [s for s, _ in seen] == list(range(4 * STEPS))
    return cfg, result, seen


@pytest.mark.parametrize(
    ("warmup", "kind"), [(0, "constant"), (1, "cosine"), (1, "constant"), (2, "cosine")]
)
def test_the_orderer_follows_its_own_schedule_in_a_run(tmp_path, monkeypatch, warmup, kind):
    cfg, result, seen = recorded_lrs(
        tmp_path, monkeypatch,
        f"trainer.policy.warmup_epochs={warmup}", f"trainer.policy.lr_schedule={kind}",
    )  # fmt: skip
    t, est_lr = cfg.trainer, cfg.estimator.lr
    model = model_lr(t, STEPS)
    for step, (matrices, vectors, orderer) in seen:
        expected = reference_policy_factor(step, STEPS, 2 * STEPS, warmup * STEPS, kind)
        assert orderer == pytest.approx(est_lr * expected, rel=EXACT), step
        assert matrices == vectors == pytest.approx(t.lr * model(step), rel=EXACT), step
    # The model's warm-up and cosine are not the orderer's: the check above tells them apart.
    gap = max(abs(model(s) - reference_policy_factor(s, STEPS, 2 * STEPS, warmup * STEPS, kind))
              for s, _ in seen)  # fmt: skip
    assert gap > 0.1
    assert result.lr_mass == {k: round(v, 4) for k, v in lr_mass(t, STEPS).items()}
    assert sum(result.lr_mass.values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.lr_restart=policy",
         r"'trainer.lr_restart' should be one of frozen, none but got 'policy'"),
        ("trainer.policy.lr_schedule=linear",
         r"'trainer.policy.lr_schedule' should be one of constant, cosine but got 'linear'"),
        ("trainer.policy.warmup_epochs=-1",
         r"'trainer.policy.warmup_epochs' should be an integer >= 0 but got -1"),
        ("trainer.policy.warmup_epochs=5",
         r"'trainer.policy.warmup_epochs' should be at most trainer.curriculum.policy_epochs "
         r"\(4\) but got 5"),
    ],
)  # fmt: skip
def test_bad_schedule_settings_are_refused(override, message):
    cfg = compose_config(["trainer=study", "method=softsort", override])
    with pytest.raises(ValueError, match=message):
        check_config(cfg)
