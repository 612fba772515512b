"""The training loop: every orderer trains, resuming is exact, failures are clean, runs logged."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_runs import TINY, tiny

from diffsort_reorder.backbones import list_backbones
from diffsort_reorder.config import compose_config
from diffsort_reorder.files import load
from diffsort_reorder.orders.methods import list_methods
from diffsort_reorder.run import cli as train_cli
from diffsort_reorder.run import loop as train_module
from diffsort_reorder.run.build import prepare_run
from diffsort_reorder.run.loop import train
from diffsort_reorder.run.schedules import lr_factor, phase_at
from estimators import list_estimators


def test_lr_warmup_then_cosine():
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert lr_factor(19, 4, 20) < 0.01
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)


def test_curriculum_phases():
    assert [phase_at(e, 2, 3) for e in range(7)] == ["fixed"] * 2 + ["policy"] * 3 + ["frozen"] * 2


def test_method_selects_its_estimator_config():
    cfg = compose_config(["method=softsort"])
    assert cfg.estimator.name == "softsort" and cfg.method == "softsort"
    assert compose_config(["method=hilbert"]).estimator is None


@pytest.mark.parametrize("method", list_estimators())
def test_every_estimator_trains_one_tiny_epoch(tmp_path, method):
    cfg = tiny(tmp_path, f"method={method}", "trainer.epochs=1")
    run = prepare_run(cfg)
    before = {k: v.clone() for k, v in run.orderer.state_dict().items()}
    result = train(cfg, run=run)
    assert result.finished and result.steps == 4 and 0.0 <= result.val_acc <= 1.0
    if result.order is None:  # an order per image: none for the dataset
        assert method == "saliency"
    else:
        assert torch.equal(torch.tensor(result.order).sort().values, torch.arange(16))
    state = load(tmp_path / "checkpoint.pt")
    init = state["orderer"]["init_order"]
    # The estimator's parameters are in the checkpoint, as they ended the run.
    learned = dict(run.orderer.named_parameters())
    assert learned and state["orderer"].keys() == before.keys()
    for name, param in learned.items():
        assert torch.equal(state["orderer"][name], param.detach().cpu()), name
    # The one policy epoch moved them. Not torchsort's: at its config's tau (0.02 -> 0.005) its
    # soft ranks of a 16-token ramp (spacing 1/15) are exactly hard, so its gradient is zero.
    moved = [k for k in learned if not torch.equal(state["orderer"][k], before[k])]
    assert bool(moved) == (method != "torchsort"), moved
    assert torch.equal(init, torch.arange(16))  # started from row_major, as its config says


@pytest.mark.parametrize("method", ["row_major", "hilbert", "oracle", "spiral"])
def test_fixed_orders_train(tmp_path, method):
    # A 2-slot window (segments of 2, no memory): the last token reads the last 2 slots best.
    window = ["backbone.options.segment=2", "backbone.options.mem_len=0"]
    result = train(tiny(tmp_path, f"method={method}", "trainer.epochs=1", *window))
    assert result.finished
    if method == "oracle":
        assert result.order[-2:] == sorted(result.order[-2:])  # the keys come last
    # key_recall: the fraction of key patches in the backbone's window; the oracle's is 1.
    keys = set(result.key_patches)
    assert len(keys) == 2 and result.key_recall == len(keys & set(result.order[-2:])) / 2
    assert (result.key_recall == 1.0) == (method == "oracle")


# Overrides that keep a backbone's tiny run short (segments shorter than the 16 patches, a small
# state); a backbone that needs none has no entry.
BACKBONE_EXTRAS = {"txl": ["backbone.options.segment=8"], "mamba": ["backbone.options.d_state=4"]}


def test_backbone_extras_name_registered_backbones():
    assert set(BACKBONE_EXTRAS) <= set(list_backbones())


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_backbone_trains(tmp_path, backbone):
    extra = BACKBONE_EXTRAS.get(backbone, [])
    result = train(tiny(tmp_path, f"backbone={backbone}", "trainer.epochs=1", *extra))
    assert result.finished and result.backbone == backbone


def test_resume_gives_the_uninterrupted_result(tmp_path):
    full = train(tiny(tmp_path / "full", "method=plackett_luce"))
    partial = train(tiny(tmp_path / "cut", "method=plackett_luce", "trainer.stop_after_epochs=1"))
    assert not partial.finished and partial.epochs == 1
    resumed = train(tiny(tmp_path / "cut", "method=plackett_luce"))
    assert resumed.finished
    for key in ("val_acc", "val_loss", "best_val_acc", "steps", "order"):
        assert getattr(resumed, key) == getattr(full, key), key
    a, b = load(tmp_path / "full" / "checkpoint.pt"), load(tmp_path / "cut" / "checkpoint.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_resume_refuses_another_config(tmp_path):
    train(tiny(tmp_path, "trainer.stop_after_epochs=1"))
    with pytest.raises(ValueError, match="another config; use a new output_dir"):
        train(tiny(tmp_path, "trainer.lr=0.1"))


def test_nan_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "method=softsort", "trainer.stop_after_epochs=1")
    train(cfg)
    ckpt = tmp_path / "checkpoint.pt"
    good = ckpt.read_bytes()

    real = train_module.F.cross_entropy

    def poisoned(logits, labels, **kwargs):
        return real(logits, labels, **kwargs) * float("nan")

    monkeypatch.setattr(train_module.F, "cross_entropy", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1"):
        train(tiny(tmp_path, "method=softsort"))
    assert ckpt.read_bytes() == good and load(ckpt)["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_non_finite_gradient_is_caught(tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils,
        "clip_grad_norm_",
        lambda params, max_norm: real(params, max_norm) * float("inf"),
    )
    with pytest.raises(
        FloatingPointError, match="non-finite model gradient norm at epoch 0, step 0"
    ):
        train(tiny(tmp_path))


def test_tensorboard_has_curves_images_and_hparams(tmp_path):
    train(tiny(tmp_path, "method=gumbel_sinkhorn", "trainer.log_every=1"))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in (
        "train/loss",
        "val/acc",
        "val/loss",
        "train/acc",
        "tau",
        "lr",
        "aux/marginal_error",
    ):
        assert tag in tags["scalars"], tag
    assert {"order", "soft_permutation"} <= set(tags["images"])
    assert len(events.Scalars("val/acc")) == 2
    taus = [e.value for e in events.Scalars("tau")]
    assert max(taus) > min(taus)  # tau followed its schedule during the policy phase
    plugin = events.PluginTagToContent("hparams")
    assert plugin  # hparams written into the run's own directory
    assert not [p for p in (tmp_path / "tb").iterdir() if p.is_dir()]  # no stray sub-run


def test_run_records_config_and_code_version(tmp_path):
    train(tiny(tmp_path, "seed=3"))
    assert "seed: 3" in (tmp_path / "config.yaml").read_text()
    assert json.loads((tmp_path / "run.json").read_text())["code_version"]


def test_cli_prints_metrics_as_the_last_line(tmp_path, capsys):
    train_cli.main([*TINY, f"output_dir={tmp_path}", "trainer.epochs=1"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("val_acc", "best_val_acc", "train_seconds", "steps", "order"):
        assert key in last
    assert 0.0 <= last["val_acc"] <= 1.0


def test_same_seed_same_result(tmp_path):
    a = train(tiny(tmp_path / "a", "method=plackett_luce", "trainer.checkpoint=false"))
    b = train(tiny(tmp_path / "b", "method=plackett_luce", "trainer.checkpoint=false"))
    assert a.val_loss == b.val_loss and a.order == b.order


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=zigzag"], "unknown method 'zigzag'; available methods: .*row_major.*softsort"),
        (
            ["backbone.name=rnn"],
            f"unknown backbone 'rnn'; available backbones: {', '.join(list_backbones())}",
        ),
        (["data=digits", "method=oracle"], "defines no oracle order"),
        (["trainer.device=tpu"], "'trainer.device' should be one of auto, cpu, cuda"),
        (["pos_embed=rope"], "'pos_embed' should be one of"),
    ],
)
def test_bad_config(tmp_path, overrides, message):
    planted = "data=digits" not in overrides  # TINY shrinks the planted data
    cfg = (
        tiny(tmp_path, *overrides)
        if planted
        else compose_config([*overrides, f"output_dir={tmp_path}"])
    )
    with pytest.raises(ValueError, match=message):
        train(cfg)


def test_methods_cover_orders_oracle_and_estimators():
    assert {"row_major", "hilbert", "oracle", "softsort", "plackett_luce"} <= set(list_methods())


def test_tau_floor_is_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="'estimator.tau' should have 0 < min <= max"):
        train(tiny(tmp_path, "method=plackett_luce", "estimator.tau.min=0"))


def test_refused_resume_keeps_the_recorded_config(tmp_path):
    train(tiny(tmp_path, "trainer.stop_after_epochs=1"))
    recorded = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ValueError, match="another config"):
        train(tiny(tmp_path, "trainer.lr=0.1"))
    assert (tmp_path / "config.yaml").read_text() == recorded


@pytest.mark.parametrize("method", ["plackett_luce", "gumbel_sinkhorn", "saliency"])
def test_resume_inside_the_policy_phase_is_exact(tmp_path, method):
    """Interrupted while the estimator is learning (tau schedule, REINFORCE baseline and the
    sampling RNG all mid-flight), the resumed run ends exactly where the uninterrupted one does."""
    curriculum = ["trainer.epochs=3", "trainer.curriculum.policy_epochs=3"]
    full = train(tiny(tmp_path / "full", f"method={method}", *curriculum))
    cut = train(
        tiny(tmp_path / "cut", f"method={method}", *curriculum, "trainer.stop_after_epochs=1")
    )
    assert cut.epochs == 1 and not cut.finished
    resumed = train(tiny(tmp_path / "cut", f"method={method}", *curriculum))
    for key in ("val_acc", "val_loss", "steps", "order"):
        assert getattr(resumed, key) == getattr(full, key), key
    a, b = load(tmp_path / "full" / "checkpoint.pt"), load(tmp_path / "cut" / "checkpoint.pt")
    for name, tensor in a["orderer"].items():
        assert torch.equal(tensor, b["orderer"][name]), name
