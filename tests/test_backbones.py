"""One contract over every registered backbone, plus what distinguishes each one."""

import pytest
import torch

from diffsort_reorder.backbones import (
    BACKBONES,
    SIZES,
    SequenceBackbone,
    create_backbone,
    list_backbones,
)

D, C = 32, 5
SMALL = dict(dim=D, depth=2, num_heads=4)
# Options that make windows and segments shorter than the sequence, and lengths no multiple of them
# (a backbone without such options needs no entry).
OPTIONS = {
    "local": {"window": 3},
    "txl": {"segment": 4, "mem_len": 4},
    "mamba": {"d_state": 4, "chunk_size": 4},
}
ORDER_INVARIANT = {"vit"}  # full attention: the same logits under any order


def make(name, num_tokens=13, **options):
    torch.manual_seed(0)
    return create_backbone(
        name, num_tokens=num_tokens, num_classes=C, **SMALL, **{**OPTIONS.get(name, {}), **options}
    )


def tokens(n=13, seed=1):
    return torch.randn(3, n, D, generator=torch.Generator().manual_seed(seed))


def test_per_backbone_entries_name_registered_backbones():
    assert set(OPTIONS) | ORDER_INVARIANT <= set(list_backbones())


def test_registry():
    names = list_backbones()
    assert names == sorted(BACKBONES) and {"vit", "txl"} <= set(names)
    assert all(issubclass(BACKBONES[name], SequenceBackbone) for name in names)
    with pytest.raises(
        ValueError, match=f"unknown backbone 'rnn'; available backbones: {', '.join(names)}$"
    ):
        create_backbone("rnn", num_tokens=4, num_classes=2)
    with pytest.raises(ValueError, match="unknown size 'huge'; available sizes: tiny, small, base"):
        create_backbone("vit", size="huge", num_tokens=4, num_classes=2)


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize("n", [1, 7, 13])
def test_shapes_for_lengths_that_are_not_multiples(name, n):
    model = make(name)
    logits = model(tokens(n))
    assert logits.shape == (3, C) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_backbones())
def test_gradient_reaches_every_parameter(name):
    model = make(name)
    model(tokens()).square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list_backbones())
def test_eval_is_deterministic(name):
    model = make(name).eval()
    x = tokens()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", list_backbones())
def test_features_have_the_hidden_states(name):
    model = make(name)
    h = model.features(tokens(), 1)
    assert h.shape == (3, 13 + model.num_prefix_tokens, D)
    with pytest.raises(ValueError, match="'num_blocks'"):
        model.features(tokens(), 3)


def test_vit_is_order_invariant_and_the_others_are_not():
    x = tokens()
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(2))
    for name in list_backbones():
        model = make(name).eval()
        same = torch.allclose(model(x), model(x[:, perm]), atol=1e-5)
        assert same == (name in ORDER_INVARIANT), name


@pytest.mark.parametrize("name,option", [("local", "window"), ("txl", "segment")])
def test_window_or_segment_longer_than_the_sequence(name, option):
    x = tokens()
    longer = make(name, **{option: 100, **({"mem_len": 0} if name == "txl" else {})}).eval()
    exact = make(
        name, **{option: 12 if name == "local" else 13, **({"mem_len": 0} if name == "txl" else {})}
    ).eval()
    assert torch.allclose(longer(x), exact(x), atol=1e-6)


def test_txl_memory_carries_information_across_segments():
    # 13 tokens, segments of 4: token 1 sits in the first segment, the readout in the fourth.
    x = tokens()
    x2 = x.clone()
    x2[:, 1] = torch.randn(D)
    with_memory = make("txl", segment=4, mem_len=12).eval()
    assert (with_memory(x2) - with_memory(x)).abs().max() > 1e-4
    without = make("txl", segment=4, mem_len=0).eval()
    assert torch.equal(without(x2), without(x))  # REOrder's reset memory: the change is lost


def test_txl_memory_reaches_one_segment_per_layer():
    x = tokens()
    x2 = x.clone()
    x2[:, 1] = torch.randn(D)  # segment 0; the last token is in segment 3
    for depth, reaches in ((1, False), (2, False), (3, True)):
        model = create_backbone("txl", num_tokens=13, num_classes=C, dim=D, depth=depth,
                                num_heads=4, segment=4, mem_len=4).eval()  # fmt: skip
        changed = bool((model(x2) - model(x)).abs().max() > 0)
        assert changed == reaches, depth


def test_txl_rejects_a_cls_readout():
    with pytest.raises(ValueError, match="'readout' 'cls' does not suit a causal segment model"):
        make("txl", readout="cls")


def test_sizes():
    assert SIZES["base"] == dict(dim=768, depth=12, num_heads=12)
    model = create_backbone("vit", size="tiny", num_tokens=4, num_classes=2)
    assert model.dim == SIZES["tiny"]["dim"]


def test_auto_paths_pick_the_fast_implementation_per_device():
    from diffsort_reorder.backbones.local import resolve_attention
    from diffsort_reorder.backbones.mamba import resolve_scan

    assert resolve_scan("auto", "cpu") == "ref" and resolve_scan("auto", "cuda") == "parallel"
    assert resolve_attention("auto", "cpu") == "ref"
    assert resolve_attention("auto", "cuda") == "banded"
    assert resolve_scan("parallel", "cpu") == "parallel"
    with pytest.raises(ValueError, match="'scan' should be one of"):
        resolve_scan("fft", "cpu")
