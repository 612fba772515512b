"""Mamba: the chunked parallel scan against the sequential reference, and the backbone's contract
(shapes, ref = parallel, gradients reach every parameter, information flows along the sequence)."""

import pytest
import torch
import torch.nn.functional as F

from diffsort_reorder.backbones import BACKBONES
from diffsort_reorder.backbones.mamba import (
    MambaBackbone,
    dt_bias_init,
    selective_scan,
    selective_scan_ref,
)

ATOL64 = 1e-10  # float64: the same recurrence evaluated in two orders
ATOL32 = 1e-4  # float32, same inputs (values of order 1-10)
SEQ_LENS = [1, 5, 16, 37]
CHUNK_SIZES = [1, 4, 64]
SMALL = dict(dim=16, depth=2, num_tokens=12, num_classes=5, d_state=4)


def scan_inputs(L, batch=2, E=3, N=4, dtype=torch.float64, seed=0):
    """Inputs as Mamba makes them: delta > 0 (softplus) and A < 0, so decays lie in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, L, E, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, L, E, generator=g, dtype=dtype))
    A = -torch.exp(torch.randn(E, N, generator=g, dtype=dtype))
    B = torch.randn(batch, L, N, generator=g, dtype=dtype)
    C = torch.randn(batch, L, N, generator=g, dtype=dtype)
    D = torch.randn(E, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


def tokens(batch=3, n=SMALL["num_tokens"], dim=SMALL["dim"], seed=0):
    return torch.randn(batch, n, dim, generator=torch.Generator().manual_seed(seed))


def perturbed(x, t):
    """``x`` with token ``t`` changed by a random vector (a constant shift is erased by the
    blocks' LayerNorm)."""
    x = x.clone()
    x[:, t] += torch.randn(x[:, t].shape, generator=torch.Generator().manual_seed(9))
    return x


def build(seed=0, **options):
    torch.manual_seed(seed)
    return MambaBackbone(**{**SMALL, **options})


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("L", SEQ_LENS)
def test_matches_reference_outputs_and_gradients(L, chunk_size):
    xs = scan_inputs(L)
    y, y_ref = selective_scan(*xs, chunk_size=chunk_size), selective_scan_ref(*xs)
    assert y.shape == (2, L, 3)
    assert torch.allclose(y, y_ref, atol=ATOL64, rtol=0)
    G = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    grads = torch.autograd.grad((y * G).sum(), xs)
    grads_ref = torch.autograd.grad((y_ref * G).sum(), xs)
    for name, g, g_ref in zip("u delta A B C D".split(), grads, grads_ref, strict=True):
        assert torch.allclose(g, g_ref, atol=ATOL64, rtol=0), name
    if L > 1:  # A's gradient is exactly zero at L = 1 (h_0 = 0); elsewhere it must be exercised
        assert grads[2].abs().max() > 1e-3


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_matches_reference_float32(chunk_size):
    xs = scan_inputs(37, batch=3, E=8, N=6, dtype=torch.float32, seed=3)
    y, y_ref = selective_scan(*xs, chunk_size=chunk_size), selective_scan_ref(*xs)
    assert torch.allclose(y, y_ref, atol=ATOL32, rtol=ATOL32)
    G = torch.randn_like(y)
    grads = torch.autograd.grad((y * G).sum(), xs)
    grads_ref = torch.autograd.grad((y_ref * G).sum(), xs)
    for name, g, g_ref in zip("u delta A B C D".split(), grads, grads_ref, strict=True):
        assert torch.allclose(g, g_ref, atol=ATOL32, rtol=ATOL32), name


@pytest.mark.parametrize("chunk_size", [2, 8])
def test_gradcheck(chunk_size):
    xs = scan_inputs(5, batch=1, E=2, N=3, seed=4)
    assert torch.autograd.gradcheck(
        lambda *args: selective_scan(*args, chunk_size=chunk_size), tuple(xs)
    )


@pytest.mark.parametrize("t", [0, 5, 9])
def test_scan_is_causal(t):
    xs = [x.detach() for x in scan_inputs(10, seed=5)]
    y = selective_scan(*xs, chunk_size=4)
    u = xs[0].clone()
    u[:, t] += 1.0
    y2 = selective_scan(u, *xs[1:], chunk_size=4)
    assert torch.equal(y2[:, :t], y[:, :t])
    assert (y2[:, t] - y[:, t]).abs().min() > 0


def test_scan_rejects_bad_input():
    xs = [x.detach() for x in scan_inputs(5)]
    with pytest.raises(ValueError, match="'chunk_size'"):
        selective_scan(*xs, chunk_size=0)
    with pytest.raises(ValueError, match="'C'"):
        selective_scan(*xs[:4], xs[4][:, :3], xs[5])
    with pytest.raises(ValueError, match="'A'"):
        selective_scan_ref(xs[0], xs[1], xs[2][:, :, None], *xs[3:])


def test_initialization_follows_mamba():
    dt = F.softplus(dt_bias_init(1000))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.max() / dt.min() > 50  # spread log-uniformly, not one value
    ssm = build().blocks[0].ssm
    A = -torch.exp(ssm.A_log)  # (E, N)
    assert torch.allclose(A, -torch.arange(1.0, 5.0).expand(32, 4))
    assert torch.equal(ssm.D, torch.ones(32))


def test_registered():
    assert BACKBONES["mamba"] is MambaBackbone


@pytest.mark.parametrize("directions", ["forward", "bidirectional"])
@pytest.mark.parametrize("readout", ["cls", "last", "mean"])
def test_output_shape_and_prefix(readout, directions):
    # num_heads and mlp_ratio come from the registry's size presets and are ignored.
    model = build(readout=readout, directions=directions, num_heads=4, mlp_ratio=4.0)
    x = tokens()
    logits = model(x)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    prefix = 1 if readout == "cls" else 0
    assert model.features(x, 1).shape == (3, prefix + 12, 16)
    assert torch.equal(model.features(x, 0)[:, prefix:], x)
    assert torch.equal(model.classify(model.features(x, 2)), logits)


@pytest.mark.parametrize("directions", ["forward", "bidirectional"])
def test_ref_and_parallel_scans_give_the_same_logits(directions):
    parallel = build(directions=directions, scan="parallel", chunk_size=4)
    ref = build(seed=1, directions=directions, scan="ref")
    ref.load_state_dict(parallel.state_dict())
    x = tokens()
    assert torch.allclose(parallel(x), ref(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(build(seed=1, directions=directions)(x), ref(x))  # weights matter


def test_eval_is_deterministic():
    model, x = build().eval(), tokens()
    assert torch.equal(model(x), model(x))
    assert torch.equal(build().eval()(x), model(x))  # same seed, same model


# Not ("cls", "bidirectional") or ("last", "bidirectional"): the last block's scan that runs
# towards the read token sees it first, so that scan's A gets an exactly zero gradient.
@pytest.mark.parametrize(
    "readout,directions", [("last", "forward"), ("mean", "forward"), ("mean", "bidirectional")]
)
def test_every_parameter_gets_a_gradient(readout, directions):
    model = build(readout=readout, directions=directions)
    model(tokens()).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_information_flows_from_the_first_token_to_the_last():
    # Token 0 is beyond the two blocks' conv windows (3 + 3 steps back from token 11), so only the
    # scan's state can carry it. At init delta <= 0.1 keeps its effect small (~1e-5), hence float64.
    model, x = build(readout="last").double().eval(), tokens().double()
    assert (model(perturbed(x, 0)) - model(x)).abs().max() > 1e-8


def test_order_sensitive():
    model, x = build(readout="last").eval(), tokens()
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(2))
    assert (model(x[:, perm]) - model(x)).abs().max() > 1e-4


@pytest.mark.parametrize("directions,causal", [("forward", True), ("bidirectional", False)])
def test_forward_backbone_is_causal_and_bidirectional_is_not(directions, causal):
    model, x, t = build(directions=directions).eval(), tokens(), 6
    h, h2 = model.features(x, 2), model.features(perturbed(x, t), 2)
    assert torch.equal(h2[:, :t], h[:, :t]) == causal
    assert (h2[:, t] - h[:, t]).abs().max() > 1e-4


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'directions'.*forward.*bidirectional"):
        build(directions="backward")
    with pytest.raises(ValueError, match="'readout'"):
        build(readout="max")
    with pytest.raises(ValueError, match="'scan'"):
        build(scan="fast")
    model = build()
    for num_blocks in (-1, 3):
        with pytest.raises(ValueError, match="'num_blocks'"):
            model.features(tokens(), num_blocks)
    with pytest.raises(ValueError, match="'x'"):
        model(tokens(n=13))
