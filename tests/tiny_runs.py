"""The tiny run config the training tests share: a run of a few seconds (a 4x4 patch grid, 64
training images, a one-block backbone)."""

from diffsort_reorder.config import compose_config

TINY = [
    "trainer=debug",
    "data.options.num_train=64",
    "data.options.num_val=32",
    "data.options.grid_size=4",
    "data.options.num_keys=2",
    "+backbone.options.dim=32",
    "+backbone.options.depth=1",
    "trainer.batch_size=16",
    "trainer.progress=false",
]


def tiny(tmp_path, *overrides):
    """The tiny run config writing into ``tmp_path``, with ``overrides`` last."""
    return compose_config([*TINY, f"output_dir={tmp_path}", *overrides])
