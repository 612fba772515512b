"""hard_permutation and apply_permutation."""

import pytest
import torch

from estimators import apply_permutation, hard_permutation, sinkhorn


def test_hard_permutation_recovers_a_planted_permutation():
    gen = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(30, generator=gen) for _ in range(4)])  # (4, 30)
    planted = torch.nn.functional.one_hot(perms, 30).float()  # (4, 30, 30)
    noisy = sinkhorn(4.0 * planted + torch.randn(4, 30, 30, generator=gen), n_iters=30)
    assert torch.equal(hard_permutation(noisy), perms)
    assert torch.equal(hard_permutation(planted[0]), perms[0])  # unbatched


def test_hard_permutation_is_a_permutation_when_row_argmax_is_not():
    P = torch.tensor([[0.6, 0.4, 0.0], [0.5, 0.1, 0.4], [0.0, 0.5, 0.5]])
    assert P.argmax(-1).tolist() == [0, 0, 1]  # not a permutation
    assert hard_permutation(P).tolist() == [0, 2, 1]


def test_hard_permutation_rejects_nan():
    with pytest.raises(ValueError, match="'P' should be finite"):
        hard_permutation(torch.full((3, 3), float("nan")))


def test_apply_hard_index_meaning():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    index = torch.tensor([[2, 0, 3, 1], [3, 2, 1, 0]])
    out = apply_permutation(x, index=index)
    for b in range(2):
        for i in range(4):
            assert torch.equal(out[b, i], x[b, index[b, i]])  # slot i holds token index[i]
    shared = apply_permutation(x, index=index[0])  # (N,) applies to every image
    assert torch.equal(shared[1], x[1, index[0]])


def test_apply_soft_equals_hard_for_one_hot():
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    index = torch.stack([torch.randperm(5) for _ in range(3)])
    P = torch.nn.functional.one_hot(index, 5).double()
    assert torch.equal(apply_permutation(x, soft=P), apply_permutation(x, index=index))


def test_prefix_tokens_never_move():
    x = torch.randn(2, 6, 3)  # CLS + 5 patches
    index = torch.tensor([4, 3, 2, 1, 0])
    out = apply_permutation(x, index=index, num_prefix_tokens=1)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[:, 1:], x[:, 1:].flip(1))
    soft = torch.full((5, 5), 0.2)
    out = apply_permutation(x, soft=soft, num_prefix_tokens=1)
    assert torch.equal(out[:, 0], x[:, 0]) and torch.allclose(out[:, 1], x[:, 1:].mean(1))


def test_soft_gradcheck():
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    P = sinkhorn(torch.randn(2, 4, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, p: apply_permutation(a, soft=p), (x, P))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(), ValueError, "exactly one of 'index'"),
        (dict(index=torch.arange(4), soft=torch.eye(4)), ValueError, "exactly one of 'index'"),
        (dict(index=torch.arange(5)), ValueError, "'index' should have shape \\(..., 4\\)"),
        (dict(index=torch.arange(4.0)), TypeError, "'index' should be a LongTensor"),
        (dict(soft=torch.eye(3)), ValueError, "'soft' should be \\(N, N\\).*N=4"),
        (dict(index=torch.arange(4), num_prefix_tokens=4), ValueError, "'num_prefix_tokens'"),
        (dict(index=torch.arange(4, device="meta")), ValueError, "one device.*'index' on meta"),
    ],
)
def test_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        apply_permutation(torch.zeros(2, 4, 3), **kwargs)


def test_tokens_must_be_3d_float():
    with pytest.raises(ValueError, match="'x' should be a 3d-tensor"):
        apply_permutation(torch.zeros(2, 4, 3, 1), index=torch.arange(4))
    with pytest.raises(TypeError, match="'x' should be a floating-point tensor"):
        apply_permutation(torch.zeros(2, 4, 3, dtype=torch.long), index=torch.arange(4))
