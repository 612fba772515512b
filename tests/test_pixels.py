"""Patch size 1 end to end: one pixel per token, 1,024 and 4,096 tokens, on the backbones that can
take that length on a CPU (mamba's chunked scan, local's banded attention), with the estimators
that order it without an N x N matrix."""

import pytest
import torch

from diffsort_reorder.backbones import list_backbones
from diffsort_reorder.config import compose_config
from diffsort_reorder.data import patchify
from diffsort_reorder.run.build import order_tokens, prepare_run
from diffsort_reorder.run.loop import train
from diffsort_reorder.study.study import Study
from estimators import create_estimator

PIXELS = [
    "trainer=debug",
    "trainer.epochs=1",
    "trainer.batch_size=4",
    "trainer.progress=false",
    "data.patch_size=1",
    "data.options.num_train=8",
    "data.options.num_val=4",
    "+backbone.options.dim=16",
    "+backbone.options.depth=1",
]
BACKBONES = {
    "mamba": ["backbone=mamba", "backbone.options.d_state=4", "backbone.options.expand=1"],
    "local": ["backbone=local", "+backbone.options.attention=banded"],
}


def test_pixel_backbones_are_registered():
    assert set(BACKBONES) <= set(list_backbones())


def pixel_run(tmp_path, grid, backbone, *overrides):
    return compose_config([
        *PIXELS, f"data.options.grid_size={grid}", *BACKBONES[backbone],
        f"output_dir={tmp_path}", *overrides,
    ])  # fmt: skip


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize(
    ("grid", "method", "extra"),
    [
        (32, "softsort", ["estimator.options.materialize_limit=0"]),  # applied, 1,024 tokens
        (32, "plackett_luce", []),
        (64, "softsort", ["estimator.options.materialize_limit=1024"]),  # applied, 4,096 tokens
        (32, "saliency", ["estimator.options.materialize_limit=0"]),  # per image, applied
    ],
)
def test_one_pixel_per_token_trains_end_to_end(tmp_path, backbone, grid, method, extra):
    cfg = pixel_run(tmp_path, grid, backbone, f"method={method}", *extra)
    run = prepare_run(cfg)
    n = grid * grid
    assert run.orderer.num_tokens == n
    run.orderer.train()
    out, _ = order_tokens(run, patchify(run.train_set.images[:2], 1))
    assert out.tokens.shape[:2] == (2, n)
    assert out.soft is None  # nothing N x N anywhere
    before = {k: v.clone() for k, v in run.orderer.named_parameters()}
    result = train(cfg, run=run)
    assert result.finished and result.grid == [grid, grid]
    if method != "saliency":
        assert torch.equal(torch.tensor(result.order).sort().values, torch.arange(n))
    moved = [k for k, v in run.orderer.named_parameters() if not torch.equal(v, before[k])]
    assert moved  # the policy epoch learned something


def study(name, tmp_path):
    overrides = [f"study={name}", f"study.output_dir={tmp_path}"]
    return Study(compose_config(overrides, config_name="study"))


def test_pixels_study_composes_and_runs_softsort_without_the_matrix(tmp_path):
    pixels = study("pixels", tmp_path)
    assert pixels.s.protocol == "curriculum" and "softsort" in pixels.methods
    cfg = pixels.run_config("softsort", "txl", 1, "probe", {}, [])
    assert cfg.data.patch_size == 1 and cfg.data.options.grid_size == 32
    assert cfg.estimator.options.materialize_limit == 0


def test_pixels_digits_study_reads_1024_pixels(tmp_path):
    pixels = study("pixels_digits", tmp_path)
    cfg = pixels.run_config("softsort", "txl", 1, "probe", {}, [])
    assert cfg.data.name == "digits" and cfg.data.patch_size == 1
    assert cfg.data.options.image_size == 32 and cfg.estimator.options.materialize_limit == 0


def test_pixels_gpu_study_builds_at_50176_tokens(tmp_path):
    pixels = study("pixels_gpu", tmp_path)
    for method in pixels.methods:
        cfg = pixels.run_config(method, "mamba", 1, "probe", {}, [])
        assert cfg.data.options.grid_size == 224 and cfg.data.patch_size == 1
        if cfg.estimator is not None:  # every listed estimator can be built for 50,176 tokens
            options = dict(cfg.estimator.options)
            if method == "saliency":
                options["dim"] = 384
            est = create_estimator(cfg.estimator.name, num_tokens=224 * 224, **options)
            assert est.soft_path in ("apply", "none")
            assert est.applies() == (est.soft_path == "apply")
