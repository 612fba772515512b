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


# A small study for the cluster and restart tests: one fixed order and one learned method (3
# trials), curriculum only, no pruning, no oracle, quick heartbeats.
SMALL = [
    "study=smoke",
    "study.methods=[row_major,softsort]",
    "study.protocol=curriculum",
    "study.oracle=false",
    "study.pruner.name=none",
    "study.progress=false",
    "study.heartbeat_interval=1",
    "study.grace_period=3",
]
