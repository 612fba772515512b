"""Per-image orders: the moving planted task, the saliency estimator, and its training."""

import pytest
import torch
from tiny_runs import TINY as SHARED_TINY

from diffsort_reorder.config import compose_config
from diffsort_reorder.data import create_dataset, patchify
from diffsort_reorder.run.build import build_run, order_tokens
from diffsort_reorder.run.loop import train, train_step
from estimators import create_estimator, plackett_luce_log_prob, plackett_luce_sample
from estimators.saliency import RELAXATIONS

# The shared tiny run, on the moving task, with segments of 8 patches.
TINY = [*SHARED_TINY, "data=planted_moving", "backbone.options.segment=8"]


def test_planted_moving_keys_move_and_are_marked():
    train_set, _ = create_dataset("planted_moving", num_train=256, num_val=8, seed=0)
    assert train_set.image_shape == (2, 32, 32)  # the symbol channel and the marker channel
    assert len({tuple(k) for k in train_set.key_positions.tolist()}) > 250  # per-image keys
    marker = patchify(train_set.images[:, 1:], 4).mean(-1)  # (M, N)
    assert torch.equal(marker > 0.5, train_set.is_key())  # the marker shows exactly the keys
    labels = train_set.symbols.gather(1, train_set.key_positions).sum(1) % train_set.num_classes
    assert torch.equal(labels, train_set.labels)
    orders = train_set.oracle_orders()
    assert torch.equal(orders[:, -8:].sort(1).values, train_set.key_positions)
    with pytest.raises(ValueError, match="keys move from image to image"):
        train_set.oracle_order()


def test_one_tiny_training_epoch_and_per_image_eval_orders(tmp_path):
    cfg = compose_config([*TINY, "method=saliency", f"output_dir={tmp_path}", "trainer.epochs=1"])
    result = train(cfg)
    assert result.finished and result.order is None and 0 <= result.val_acc <= 1
    run = build_run(cfg)
    images = run.val_set.images[:8]
    run.model.eval()
    run.orderer.eval()
    with torch.no_grad():
        out, early_ms = order_tokens(run, patchify(images, 4))
    assert early_ms is not None and early_ms >= 0
    assert torch.equal(out.index.sort(1).values, torch.arange(16).expand(8, 16))
    # Make the head respond to the patches, then the orders differ between images.
    with torch.no_grad():
        run.orderer.head[-1].weight.normal_(std=1.0)
        out, _ = order_tokens(run, patchify(images, 4))
    assert len({tuple(row) for row in out.index.tolist()}) > 1


def test_training_moves_the_marked_keys_to_the_end():
    """After a short training on the moving task, the learned orders put more keys in the last
    slots (where the causal backbone reads) than the initial row-major order does."""
    cfg = compose_config([*TINY, "method=saliency", "output_dir=/dev/null",
                          "data.options.num_train=256", "estimator.lr=0.03"])  # fmt: skip
    torch.manual_seed(0)
    run = build_run(cfg)
    images, labels = run.train_set.images, run.train_set.labels
    is_key = run.train_set.is_key()

    def keys_in_last_slots():
        run.model.eval()
        run.orderer.eval()
        with torch.no_grad():
            out, _ = order_tokens(run, patchify(images, 4))
        return float(is_key.gather(1, out.index[:, -2:]).float().mean())

    before = keys_in_last_slots()
    run.model.train()
    run.orderer.train()
    for step in range(120):
        run.orderer.tau = 0.3
        idx = torch.arange(step * 32, step * 32 + 32) % 256
        train_step(run, images[idx], labels[idx])
    after = keys_in_last_slots()
    assert after > before + 0.3, (before, after)


# Every pathwise relaxation (plackett_luce, sampled, has no gradient through the sort).
@pytest.mark.parametrize("relaxation", [r for r, relax in RELAXATIONS.items() if relax is not None])
@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_gradcheck_through_the_score_head(relaxation, tau):
    torch.manual_seed(0)
    est = create_estimator("saliency", num_tokens=5, dim=4, relaxation=relaxation, tau=tau)
    est = est.double()
    with torch.no_grad():
        est.head[-1].weight.normal_()  # a head whose output matters
    tokens = torch.randn(2, 5, 4, dtype=torch.float64)
    features = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: est(tokens, features=f).tokens, (features,))
    weight = est.head[1].weight
    out = est(tokens, features=features)
    (g,) = torch.autograd.grad(out.tokens.square().sum(), weight)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_plackett_luce_relaxation_samples_per_image():
    torch.manual_seed(0)
    est = create_estimator("saliency", num_tokens=6, dim=3, relaxation="plackett_luce", tau=1.0)
    out = est(torch.randn(16, 6, 3))
    assert out.log_prob.shape == (16,) and out.soft is None
    assert len({tuple(r) for r in out.index.tolist()}) > 1  # one sample per image
    loss = est.surrogate_loss(out, torch.rand(16))
    loss.backward()
    assert est.position_bias.grad.abs().sum() > 0


def test_plackett_luce_relaxation_takes_the_log_prob_at_the_sampling_tau():
    """The REINFORCE term needs the log-probability of the distribution the permutation was drawn
    from: Plackett-Luce over scores / tau, not over the scores at tau = 1."""
    tau = 0.3
    torch.manual_seed(0)
    est = create_estimator("saliency", num_tokens=6, dim=3, relaxation="plackett_luce", tau=tau)
    with torch.no_grad():
        est.head[-1].weight.normal_()  # per-image scores, not the ramp alone
    tokens = torch.randn(8, 6, 3)
    torch.manual_seed(1)
    out = est(tokens)
    scores = est.scores(tokens).detach()  # (B, N)
    torch.manual_seed(1)
    assert torch.equal(out.index, plackett_luce_sample(scores, 1, tau)[0])  # drawn at tau
    expected = plackett_luce_log_prob(scores / tau, out.index)  # (B,)
    assert torch.allclose(out.log_prob, expected, rtol=1e-5, atol=1e-5)
    at_one = plackett_luce_log_prob(scores, out.index)
    assert (out.log_prob - at_one).abs().min() > 0.1  # the case tells the two apart


def test_bad_options():
    with pytest.raises(ValueError, match="'relaxation' should be one of"):
        create_estimator("saliency", num_tokens=4, dim=3, relaxation="sinkhorn")
    est = create_estimator("saliency", num_tokens=4, dim=3)
    with pytest.raises(ValueError, match="'features' should be \\(B, N, 3\\)"):
        est(torch.randn(2, 4, 3), features=torch.randn(2, 4, 5))


def test_gradient_saliency_puts_the_marked_keys_where_a_trained_backbone_reads(tmp_path):
    """Train the backbone on the moving task (row-major order), then order each image by the
    gradient norm of its top logit: the keys, which decide the label, go to the end, where the
    causal backbone reads. One segment: across txl segments the memory is detached, so no
    gradient reaches earlier segments' tokens and this probe cannot see keys there."""
    overrides = [
        *TINY,
        "method=row_major",
        "data.options.num_train=512",
        "trainer.epochs=6",
        "trainer.lr=0.003",
        "backbone.options.segment=16",
        f"output_dir={tmp_path}",
    ]
    train(compose_config(overrides))
    probe_cfg = compose_config([*overrides, "method=saliency_gradient", "trainer.resume=false"])
    run = build_run(probe_cfg)
    from diffsort_reorder.files import load

    run.model.load_state_dict(load(tmp_path / "checkpoint.pt")["model"])
    run.model.eval()
    images, is_key = run.val_set.images, run.val_set.is_key()
    out, early_ms = order_tokens(run, patchify(images, 4))
    assert early_ms is not None
    assert torch.equal(out.index.sort(1).values, torch.arange(16).expand(len(images), 16))
    keys_last = float(is_key.gather(1, out.index[:, -2:]).float().mean())
    assert keys_last > 0.5, keys_last  # chance: 2 keys in the last 2 of 16 slots = 0.125
    slot = out.index.argsort(1).float() / 15  # each patch's slot, 0 = first, 1 = last
    assert slot[is_key].mean() > 0.8 > 0.5 > slot[~is_key].mean()
    saliency = run.model.gradient_saliency(run.model.embed(patchify(images[:2], 4)))
    assert saliency.shape == (2, 16) and (saliency >= 0).all()
    assert all(p.grad is None for p in run.model.parameters())  # the probe leaves no gradient


def test_attention_rollout_puts_the_marked_keys_last_on_a_trained_local_backbone(tmp_path):
    """The CLS token of a local-attention backbone trained on the moving task attends to the
    keys; sorting by its attention rollout places them at the end."""
    overrides = [
        *[o for o in TINY if "segment" not in o],
        "backbone=local",
        "backbone.options.window=1",
        "method=row_major",
        "data.options.num_train=512",
        "trainer.epochs=6",
        "trainer.lr=0.003",
        f"output_dir={tmp_path}",
    ]
    train(compose_config(overrides))
    run = build_run(compose_config([*overrides, "method=saliency_attention"]))
    from diffsort_reorder.files import load

    run.model.load_state_dict(load(tmp_path / "checkpoint.pt")["model"])
    run.model.eval()
    images, is_key = run.val_set.images, run.val_set.is_key()
    out, _ = order_tokens(run, patchify(images, 4))
    slot = out.index.argsort(1).float() / 15
    assert slot[is_key].mean() > 0.75 > 0.5 > slot[~is_key].mean(), float(slot[is_key].mean())


def test_attention_saliency_needs_a_backbone_that_exposes_attention(tmp_path):
    run = build_run(compose_config([*TINY, "method=saliency_attention", f"output_dir={tmp_path}"]))
    with pytest.raises(ValueError, match="exposes no attention probabilities; .*backbone=local"):
        order_tokens(run, patchify(run.val_set.images[:2], 4))
