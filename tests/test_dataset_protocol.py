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


def test_key_recall_counts_the_keys_in_the_backbones_window():
    keys = torch.tensor([0, 5, 9])
    order = torch.arange(12)[None]  # keys at slots 0, 5, 9
    assert key_recall(order, keys).item() == pytest.approx(1 / 3)  # the last K = 3: 9..11
    assert key_recall(order, keys, window=2).item() == 0.0  # slots 10, 11
    assert key_recall(order, keys, window=7).item() == pytest.approx(2 / 3)  # slots 5..11
    assert key_recall(order, keys, window=100).item() == 1.0  # clamped to the whole sequence


@pytest.mark.parametrize(
    ("n", "segment", "mem_len", "window"),
    [(64, 16, 16, 32), (64, 16, 0, 16), (20, 8, 8, 12), (16, 32, 32, 16)],
)
def test_txl_reads_its_last_segment_and_the_memory_it_attends(n, segment, mem_len, window):
    from diffsort_reorder.backbones import create_backbone

    backbone = create_backbone("txl", size="tiny", num_tokens=n, num_classes=3, segment=segment,
                               mem_len=mem_len)  # fmt: skip
    assert backbone.readout_window() == window
    vit = create_backbone("vit", size="tiny", num_tokens=n, num_classes=3)
    assert vit.readout_window() is None  # reads every slot alike


def test_planted_and_digits_have_a_test_split_nothing_else_reads():
    from diffsort_reorder.data import create_splits

    train, val, test = create_splits("planted", **SMALL["planted"], num_test=6)
    assert len(test) == 6 and test.shared_keys() == val.shared_keys()  # the same task
    assert not torch.equal(test.images[:4], val.images)  # a stream of its own
    again = create_splits("planted", **SMALL["planted"], num_test=6)
    assert torch.equal(again.test.images, test.images) and torch.equal(again.val.images, val.images)
    # Digits: one split for every run seed (split_seed), disjoint parts covering the set.
    a = create_splits("digits", seed=1, split_seed=0)
    b = create_splits("digits", seed=2, split_seed=0)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.val.images, b.val.images)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    rows = {tuple(x.flatten().tolist()) for x in a.test.images}
    assert not rows & {tuple(x.flatten().tolist()) for x in a.val.images[:50]}


def test_majority_label_rewards_every_key_in_view():
    from diffsort_reorder.data import create_splits
    from diffsort_reorder.data.planted import planted_labels

    symbols = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 0, 0, 0]])
    keys = torch.tensor([0, 1, 2])
    assert planted_labels(symbols, keys, 4).tolist() == [2, 1]  # the sum
    assert planted_labels(symbols, keys, 2, "majority").tolist() == [1, 0]  # 2 of 3, 1 of 3
    train, _, _ = create_splits("planted", **SMALL["planted"], num_keys=3, label="majority")
    assert train.num_classes == 2 and set(train.labels.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="'label' should be one of sum, majority but got 'mode'"):
        create_splits("planted", **SMALL["planted"], label="mode")
    with pytest.raises(ValueError, match="'num_classes' should be 2"):
        create_splits("planted", **SMALL["planted"], label="majority", num_classes=3)
