"""The priors measure what they claim on data built for them; they plug into training; bad input
is refused."""

import json

import pytest
import torch

from diffsort_reorder.config import compose_config
from diffsort_reorder.data import unpatchify
from diffsort_reorder.orders.priors import PRIORS, collapse_prior, compression_prior, pagerank
from diffsort_reorder.orders.priors import compression as compression_module
from diffsort_reorder.orders.priors.cli import main as priors_main
from diffsort_reorder.run.build import build_run

ALL_ORDERS = ("row_major", "column_major", "hilbert", "spiral", "diagonal", "snake", "z_order")


def block_images(num=256, grid=16, block=4, patch=2, flip=0.1, seed=0):
    """Images constant on aligned 4x4-patch blocks, with a fraction of patches redrawn."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.rand(num, grid // block, grid // block, generator=g)
    levels = levels.repeat_interleave(block, 1).repeat_interleave(block, 2)  # (M, G, G)
    redraw = torch.rand(num, grid, grid, generator=g) < flip
    levels[redraw] = torch.rand(int(redraw.sum()), generator=g)
    images = levels.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]
    return (images + 0.02 * torch.randn(images.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("stream", ["unigram", "bigram"])
def test_compression_prior_prefers_orders_that_follow_the_structure(stream):
    prior = compression_prior(block_images(), 2, codebook_size=16, stream=stream,
                              orders=ALL_ORDERS, images_per_stream=16, cache_dir=False)  # fmt: skip
    s, ci = prior.scores, prior.intervals
    # Hilbert and z-order keep every aligned block contiguous: they compress most, clearly.
    for following in ("hilbert", "z_order"):
        for other in ("row_major", "column_major", "spiral", "diagonal", "snake"):
            assert ci[following][0] > ci[other][1], (following, other, s)
    # Diagonal scans cross the blocks most often: they compress least.
    assert {min(s, key=s.get)} <= {"diagonal", "snake"}
    assert prior.order_name == min(s, key=s.get)  # select="least", as REOrder's introduction


def test_compression_prior_selects_most_and_returns_the_order_itself():
    prior = compression_prior(block_images(), 2, codebook_size=16, select="most",
                              images_per_stream=16, cache_dir=False)  # fmt: skip
    assert prior.order_name == "hilbert"  # the most compressible of the six default orders
    from diffsort_reorder.orderings import scan_order

    assert torch.equal(prior.order, scan_order("hilbert", 16, 16))
    assert "hilbert" in prior.table() and "<- selected" in prior.table()


def test_compression_prior_is_cached(tmp_path, monkeypatch):
    images = block_images(num=64)
    first = compression_prior(images, 2, codebook_size=8, cache_dir=tmp_path)
    assert len(list((tmp_path / "priors").glob("compression-*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(compression_module, "quantize", fail)
    again = compression_prior(images, 2, codebook_size=8, cache_dir=tmp_path)
    assert again.scores == first.scores
    with pytest.raises(AssertionError, match="recomputed"):  # other settings, other fingerprint
        compression_prior(images, 2, codebook_size=8, stream="bigram", cache_dir=tmp_path)


def test_an_unreadable_cache_entry_is_computed_again(tmp_path):
    """An entry another version wrote (its pickled classes since moved) or a torn one is a miss,
    overwritten, not a traceback on every run."""
    images = block_images(num=64)
    first = compression_prior(images, 2, codebook_size=8, cache_dir=tmp_path)
    (entry,) = (tmp_path / "priors").glob("compression-*.pt")
    entry.write_bytes(entry.read_bytes()[:40])  # torn
    again = compression_prior(images, 2, codebook_size=8, cache_dir=tmp_path)
    assert again.scores == first.scores and entry.stat().st_size > 40


def test_the_earlier_prior_group_names_still_compose():
    assert compose_config(["prior=compression"]).prior.name == "compression_prior"
    assert compose_config(["prior=collapse"]).prior.name == "collapse_prior"


def source_images(seed=0, num=512, grid=4, patch=2):
    """Patch 5 is a random source; patches 0, 10, 15 each repeat one of its pixels (so the source
    predicts each of them, and each predicts a quarter of the source); the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    patches = torch.rand(num, grid * grid, patch * patch, generator=g)
    for k, dependent in enumerate((0, 10, 15)):
        patches[:, dependent] = patches[:, 5, k : k + 1].expand(num, patch * patch)
    return unpatchify(patches, patch, grid * patch, grid * patch)


@pytest.mark.parametrize("seed", [0, 1])
def test_collapse_prior_ranks_the_source_above_what_it_predicts_and_above_noise(seed, two_threads):
    # On 2 threads: at one thread seed 1's selector settles where the noise patches' arbitrary
    # dependencies pile onto one noise patch (rank 0.14 against the source's 0.12), though each
    # dependent still relies on the source most; the thread count moves the optimum.
    prior = collapse_prior(source_images(seed), 2, seed=seed, cache_dir=False)
    rank = prior.pagerank
    dependents, noise = [0, 10, 15], [i for i in range(16) if i not in (0, 5, 10, 15)]
    assert rank[5] > rank[dependents].max() and rank[5] > rank[noise].max()
    assert prior.order[0] == 5
    # The learned dependencies: each dependent relies on the source more than on anything else.
    for d in dependents:
        assert prior.dependency[d].argmax() == 5
    assert prior.losses[-1] < prior.losses[0]
    assert prior.image_orders.shape == (512, 16)
    assert torch.equal(prior.image_orders.sort(-1).values, torch.arange(16).expand(512, 16))


def test_pagerank_flows_to_the_patches_others_depend_on():
    star = torch.zeros(5, 5)
    star[1:, 0] = 1.0  # every patch depends on patch 0
    rank = pagerank(star)
    assert rank.argmax() == 0 and float(rank.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(pagerank(torch.ones(4, 4)), torch.full((4,), 0.25))
    assert rank[0] > pagerank(star, damping=0.5)[0]  # less damping, more flow to the hub
    batched = pagerank(torch.stack([star, torch.ones(5, 5)]))
    assert torch.allclose(batched[0], rank)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: compression_prior(torch.rand(2, 8, 8), 2), ValueError, "4d-tensor"),
        (
            lambda: compression_prior(torch.rand(40, 1, 8, 8) * 2, 2),
            ValueError,
            "lie in \\[0, 1\\]",
        ),
        (
            lambda: compression_prior(torch.rand(40, 1, 8, 8), 3),
            ValueError,
            "'patch_size' 3 does not divide",
        ),
        (
            lambda: compression_prior(torch.rand(10, 1, 8, 8), 2, codebook_size=16),
            ValueError,
            "10 images, fewer than 'codebook_size' 16",
        ),
        (
            lambda: compression_prior(
                torch.rand(40, 1, 8, 8), 2, codebook_size=8, stream="trigram"
            ),
            ValueError,
            "'stream' should be one of",
        ),
        (
            lambda: compression_prior(torch.rand(40, 1, 8, 8), 2, codebook_size=8, select="middle"),
            ValueError,
            "'select' should be one of",
        ),
        (
            lambda: compression_prior(torch.zeros(40, 1, 8, 8, dtype=torch.uint8), 2),
            TypeError,
            "float tensor",
        ),
        (
            lambda: collapse_prior(torch.rand(8, 1, 8, 8), 2, damping=1.0),
            ValueError,
            "'damping' should lie in \\(0, 1\\) but got 1.0",
        ),
        (lambda: collapse_prior(torch.rand(8, 1, 8, 8), 2, damping=0), ValueError, "'damping'"),
        (lambda: collapse_prior(torch.rand(8, 1, 8, 8), 2, damping=-0.1), ValueError, "'damping'"),
        (lambda: collapse_prior(torch.rand(8, 1, 8, 8), 8), ValueError, "at least 2 patches"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


TINY = [
    "data.options.num_train=64",
    "data.options.num_val=16",
    "data.options.grid_size=4",
    "prior.options.steps=20",
    "prior.options.max_images=64",
    "prior.options.codebook_size=8",
]


@pytest.mark.parametrize("prior", ["compression_prior", "collapse_prior"])
def test_priors_are_methods_and_estimator_starting_orders(tmp_path, monkeypatch, prior):
    monkeypatch.setenv("DIFFSORT_REORDER_CACHE", str(tmp_path))
    unused = "codebook_size" if prior == "collapse_prior" else "steps"
    overrides = [o for o in TINY if unused not in o]
    fixed = build_run(compose_config([f"method={prior}", *overrides]))
    order = fixed.orderer.order()
    learned = build_run(
        compose_config(["method=plackett_luce", f"estimator.init={prior}", *overrides])
    )
    assert torch.equal(learned.orderer.eval().order(), order)  # the order itself, not its inverse
    assert len(list((tmp_path / "priors").glob("*.pt"))) == 1  # computed once, then cached


@pytest.mark.parametrize("prior", list(PRIORS))
def test_cli_prints_the_table_and_writes_the_order(tmp_path, capsys, prior):
    overrides = [f"prior={prior}", f"output_dir={tmp_path}", "data.options.num_train=64",
                 "data.options.grid_size=4", "prior.options.max_images=64"]  # fmt: skip
    overrides.append(
        "prior.options.codebook_size=8"
        if prior == "compression_prior"
        else "prior.options.steps=20"
    )
    result = priors_main(overrides)
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == result
    assert "slot of each patch" in out
    assert sorted(result["order"]) == list(range(16))
    assert json.loads((tmp_path / "order.json").read_text())["order"] == result["order"]
    assert (tmp_path / "order.png").stat().st_size > 1000


def test_collapse_prior_leaves_the_global_rng_alone(tmp_path):
    images = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    collapse_prior(images, 2, steps=2, cache_dir=False)
    assert torch.equal(torch.rand(3), expected)
