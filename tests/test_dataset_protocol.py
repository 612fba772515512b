"""The dataset protocol (``PatchDataset``): what a run, a loader and a prior ask of every dataset,
asked of every registered one, and the members a planted dataset adds."""

import pytest
import torch

from diffsort_reorder.data import PatchDataset, create_dataset, list_datasets
from diffsort_reorder.data.planted import key_recall

SMALL = {
    "planted": {"num_train": 8, "num_val": 4, "grid_size": 4},
    "planted_moving": {"num_train": 8, "num_val": 4, "grid_size": 4},
    "digits": {},
}
NEEDS_FILES = {"cifar10", "imagefolder"}  # read from a local folder: tested in test_data.py


def test_every_dataset_is_small_here_or_read_from_files():
    assert set(SMALL) | NEEDS_FILES == set(list_datasets())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_dataset_follows_the_protocol(name):
    train, val = create_dataset(name, **SMALL[name])
    assert isinstance(train, PatchDataset) and isinstance(val, PatchDataset)
    c, h, w = train.image_shape
    image, label = train[0]
    assert image.shape == (c, h, w) and 0 <= label < train.num_classes
    assert train.labels.shape == (len(train),) and train.in_memory
    units = train.unit_images(torch.tensor([1, 0]))  # (2, C, H, W) in [0, 1]
    assert units.shape == (2, c, h, w) and 0 <= units.min() and units.max() <= 1
    metrics = val.order_metrics(torch.arange(16).expand(2, 16), 0)  # 4x4 patches of planted
    assert all(v.shape == (2,) for v in metrics.values())
    assert set(metrics) == ({"key_recall"} if name.startswith("planted") else set())


def test_planted_scores_an_order_by_its_keys_and_shares_them():
    _, val = create_dataset("planted", **SMALL["planted"], num_keys=2)
    keys = val.shared_keys()
    assert keys == val.key_positions.tolist() and len(keys) == 2
    oracle = val.oracle_order().expand(3, 16)  # keys last
    assert torch.equal(val.order_metrics(oracle, 0)["key_recall"], torch.ones(3))
    reversed_oracle = oracle.flip(-1)  # keys first: none in the last slots
    assert torch.equal(val.order_metrics(reversed_oracle, 0)["key_recall"], torch.zeros(3))


def test_moving_keys_are_scored_per_image_from_the_first_one_asked():
    _, val = create_dataset("planted_moving", **SMALL["planted_moving"], num_keys=2)
    assert val.shared_keys() is None  # no key patches common to every image
    oracles = val.oracle_orders()  # (M, N): each image's keys last
    got = val.order_metrics(oracles[2:4], 2)["key_recall"]
    assert torch.equal(got, torch.ones(2))
    shifted = val.order_metrics(oracles[2:4], 0)["key_recall"]  # scored against images 0, 1
    assert torch.equal(shifted, key_recall(oracles[2:4], val.key_positions[0:2]))


def test_a_dataset_without_keys_scores_nothing_and_has_no_oracle():
    _, val = create_dataset("digits")
    assert val.shared_keys() is None and val.order_metrics(torch.arange(4)[None], 0) == {}
    with pytest.raises(ValueError, match="defines no oracle order"):
        val.oracle_order()
