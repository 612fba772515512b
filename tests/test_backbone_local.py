"""Sliding-window attention: the mask, banded vs reference (outputs and gradients), locality, and
the ``local`` backbone."""

import pytest
import torch

from diffsort_reorder.backbones.local import (
    LocalBackbone,
    LocalBlock,
    local_attention_banded,
    local_attention_mask,
    local_attention_ref,
    local_attention_weights,
    resolve_attention,
)

ATOL64 = 1e-12  # float64 agreement of two exact evaluations of the same attention
ATOL_MODEL64 = 1e-10  # float64 logits of a whole backbone, two attention paths
CHANGED = 1e-6  # a hidden state that depends on the changed token moves by more than this
DIM, HEADS, NUM_TOKENS, CLASSES = 16, 2, 12, 5


def _qkv(num_patches, num_prefix_tokens, seed=0, B=2, H=2, dh=4):
    g = torch.Generator().manual_seed(seed)
    shape = (B, H, num_prefix_tokens + num_patches, dh)
    return [torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_() for _ in "qkv"]


def _backbone(seed=0, **options):
    torch.manual_seed(seed)
    kwargs = dict(dim=DIM, depth=2, num_heads=HEADS, num_tokens=NUM_TOKENS, num_classes=CLASSES)
    return LocalBackbone(**{**kwargs, **options})


# --- the mask -------------------------------------------------------------------------------


def test_mask_small_example():
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1],  # CLS sees everything
            [1, 1, 1, 0, 0, 0],  # patch 0 sees patches 0-1
            [1, 1, 1, 1, 0, 0],
            [1, 0, 1, 1, 1, 0],
            [1, 0, 0, 1, 1, 1],
            [1, 0, 0, 0, 1, 1],  # patch 4 sees patches 3-4
        ],
        dtype=torch.bool,
    )
    assert torch.equal(local_attention_mask(5, 1, num_prefix_tokens=1), expected)
    assert torch.equal(local_attention_mask(5, 1, num_prefix_tokens=0), expected[1:, 1:])


@pytest.mark.parametrize("num_prefix_tokens", [0, 1, 2])
@pytest.mark.parametrize("window", [0, 2, 5])
def test_mask_symmetric_with_global_prefix(window, num_prefix_tokens):
    N, P = 9, num_prefix_tokens
    mask = local_attention_mask(N, window, P)
    assert mask.shape == (P + N, P + N) and mask.dtype == torch.bool
    assert torch.equal(mask, mask.T)
    assert mask[:P].all() and mask[:, :P].all()
    # Among patches: a band of half-width `window`, so row i has min(i, w) + 1 + min(N-1-i, w).
    counts = mask[P:, P:].sum(1)
    i = torch.arange(N)
    assert torch.equal(counts, i.clamp(max=window) + 1 + (N - 1 - i).clamp(max=window))


def test_mask_window_wider_than_sequence_is_full():
    assert local_attention_mask(6, 5).all() and local_attention_mask(6, 100).all()
    assert not local_attention_mask(6, 4).all()


# --- banded vs reference --------------------------------------------------------------------


@pytest.mark.parametrize("num_prefix_tokens", [0, 1])
@pytest.mark.parametrize("block_size", [None, 1, 3, 16])
@pytest.mark.parametrize("window", [0, 1, 7, 40])
@pytest.mark.parametrize("num_patches", [1, 5, 16, 37])
def test_banded_matches_ref(num_patches, window, block_size, num_prefix_tokens):
    q, k, v = _qkv(num_patches, num_prefix_tokens)
    ref = local_attention_ref(q, k, v, window, num_prefix_tokens)
    out = local_attention_banded(q, k, v, window, num_prefix_tokens, block_size=block_size)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=ATOL64, rtol=0)
    G = torch.randn_like(ref)  # the same random cotangent through both paths
    g_ref = torch.autograd.grad((ref * G).sum(), (q, k, v))
    g_out = torch.autograd.grad((out * G).sum(), (q, k, v))
    for a, b in zip(g_out, g_ref, strict=True):
        assert torch.allclose(a, b, atol=ATOL64, rtol=0)


def test_banded_gradcheck():
    q, k, v = _qkv(5, 1, B=1, H=1, dh=2)
    fn = lambda q, k, v: local_attention_banded(q, k, v, window=1, block_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_banded_is_not_full_attention():
    # Guards the comparison above: with a narrow window the result differs from full attention.
    q, k, v = _qkv(13, 1)
    local = local_attention_banded(q, k, v, window=2)
    assert (local - local_attention_ref(q, k, v, window=12)).abs().max() > CHANGED


@pytest.mark.parametrize("num_prefix_tokens", [0, 1])
def test_weights_are_the_reference(num_prefix_tokens):
    q, k, v = _qkv(9, num_prefix_tokens)
    w = local_attention_weights(q, k, 2, num_prefix_tokens)  # (B, H, T, T)
    mask = local_attention_mask(9, 2, num_prefix_tokens)
    assert torch.allclose(w @ v, local_attention_ref(q, k, v, 2, num_prefix_tokens), atol=ATOL64)
    assert torch.allclose(w.sum(-1), torch.ones(()).double(), atol=ATOL64)
    assert (w[..., ~mask] == 0).all() and (w[..., mask] > 0).all()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda q, k, v: local_attention_banded(q, k, v, window=-1), "window"),
        (lambda q, k, v: local_attention_ref(q, k, v, window=-1), "window"),
        (lambda q, k, v: local_attention_banded(q, k, v, 2, block_size=0), "block_size"),
        (lambda q, k, v: local_attention_banded(q, k, v, 2, num_prefix_tokens=9), "num_prefix"),
        (lambda q, k, v: local_attention_ref(q, k[..., :2], v, 2), "'k'"),
        (lambda q, k, v: local_attention_mask(5, 1, num_prefix_tokens=-1), "num_prefix_tokens"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    q, k, v = _qkv(5, 1)
    with pytest.raises(ValueError, match=name):
        call(q, k, v)


def test_auto_attention_is_banded_on_cuda_only():
    assert resolve_attention("auto", torch.device("cpu")) == "ref"
    assert resolve_attention("auto", torch.device("cuda")) == "banded"
    assert resolve_attention("banded", torch.device("cpu")) == "banded"
    with pytest.raises(ValueError, match="attention"):
        resolve_attention("flash", torch.device("cpu"))


# --- one block: locality ----------------------------------------------------------------------


def _block_outputs_after_change(window, attention, num_prefix_tokens, N=10):
    """A block's hidden states for an input and for the same input with patch 0 changed."""
    torch.manual_seed(0)
    block = LocalBlock(DIM, HEADS, 2.0, window, attention=attention).double()
    x = torch.randn(2, num_prefix_tokens + N, DIM, dtype=torch.float64)
    x2 = x.clone()
    x2[:, num_prefix_tokens] += torch.randn(2, DIM, dtype=torch.float64)
    with torch.no_grad():
        h, h2 = block(x, num_prefix_tokens), block(x2, num_prefix_tokens)
    delta = (h - h2).abs().amax(dim=(0, 2))  # (T,) largest change per token
    return delta[num_prefix_tokens:], delta[:num_prefix_tokens]


@pytest.mark.parametrize("attention", ["ref", "banded"])
@pytest.mark.parametrize("num_prefix_tokens", [0, 1])
def test_block_is_local(attention, num_prefix_tokens):
    window = 2
    patches, prefix = _block_outputs_after_change(window, attention, num_prefix_tokens)
    assert (patches[: window + 1] > CHANGED).all()  # patch 0 itself and its neighbours move
    assert (patches[window + 1 :] == 0).all()  # farther patches cannot see patch 0
    assert (prefix > CHANGED).all()  # the CLS token sees every patch


@pytest.mark.parametrize("attention", ["ref", "banded"])
def test_block_with_window_covering_sequence_is_global(attention):
    patches, _ = _block_outputs_after_change(window=9, attention=attention, num_prefix_tokens=1)
    assert (patches > CHANGED).all()


def test_block_returns_reference_attention():
    torch.manual_seed(0)
    block = LocalBlock(DIM, HEADS, 2.0, window=1, attention="banded").double()
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    h, attn = block(x, num_prefix_tokens=1, return_attention=True)
    assert attn.shape == (2, HEADS, 7, 7)
    assert torch.allclose(h, block(x, num_prefix_tokens=1), atol=ATOL64, rtol=0)
    assert (attn[..., ~local_attention_mask(6, 1)] == 0).all()


# --- the backbone ---------------------------------------------------------------------------


@pytest.mark.parametrize("readout", ["cls", "mean", "last"])
def test_logits_shape_and_every_parameter_gets_a_gradient(readout):
    model = _backbone(readout=readout)
    x = torch.randn(3, NUM_TOKENS, DIM)
    logits = model(x)
    assert logits.shape == (3, CLASSES) and torch.isfinite(logits).all()
    (logits * torch.randn_like(logits)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
    assert (model.cls_token is not None) == (readout == "cls")


@pytest.mark.parametrize("readout", ["cls", "mean", "last"])
def test_ref_and_banded_give_the_same_logits(readout):
    ref = _backbone(readout=readout, window=2, attention="ref").double()
    banded = _backbone(readout=readout, window=2, attention="banded").double()
    banded.load_state_dict(ref.state_dict())
    x = torch.randn(3, NUM_TOKENS - 1, DIM, dtype=torch.float64)  # fewer tokens than built for
    assert torch.allclose(ref(x), banded(x), atol=ATOL_MODEL64, rtol=0)


def test_eval_is_deterministic():
    model = _backbone().eval()
    x = torch.randn(2, NUM_TOKENS, DIM)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_window_wider_than_sequence_is_full_attention():
    x = torch.randn(2, NUM_TOKENS, DIM, dtype=torch.float64)
    full = _backbone(window=NUM_TOKENS - 1, attention="banded").double()
    logits = {}
    for window in (NUM_TOKENS, 1000, 2):
        model = _backbone(window=window, attention="banded").double()
        model.load_state_dict(full.state_dict())
        logits[window] = model(x)
    assert torch.allclose(logits[NUM_TOKENS], full(x), atol=ATOL_MODEL64, rtol=0)
    assert torch.allclose(logits[1000], full(x), atol=ATOL_MODEL64, rtol=0)
    assert (logits[2] - full(x)).abs().max() > CHANGED  # a narrow window does change the result


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(window=-1), "window"),
        (dict(window=1.5), "window"),
        (dict(attention="flash"), "attention"),
        (dict(num_heads=3), "num_heads"),
        (dict(depth=0), "depth"),
    ],
)
def test_bad_options_raise(options, name):
    with pytest.raises(ValueError, match=name):
        _backbone(**options)


def test_features():
    model = _backbone(depth=2).eval()
    x = torch.randn(2, NUM_TOKENS, DIM)
    with torch.no_grad():
        h0, h1, h2 = (model.features(x, n) for n in range(3))
        assert torch.equal(h0, model.add_prefix(x))
        assert h1.shape == h2.shape == (2, 1 + NUM_TOKENS, DIM)
        assert torch.allclose(h1, model.blocks[0](h0, num_prefix_tokens=1))
        assert torch.allclose(model.classify(h2), model(x))
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="num_blocks"):
            model.features(x, bad)
