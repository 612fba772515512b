"""The dataset protocol (``PatchDataset``): what a run, a loader and a prior ask of every dataset,
asked of every registered one, and the members a planted dataset adds."""

import pickle

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_data import image_ids, write_cifar  # small CIFAR-10 batches, each image's id

from diffsort_reorder.config import compose_config
from diffsort_reorder.data import PatchDataset, create_dataset, create_splits, list_datasets
from diffsort_reorder.data.planted import key_recall
from diffsort_reorder.run.loop import train

SMALL = {
    "planted": {"num_train": 8, "num_val": 4, "grid_size": 4},
    "planted_moving": {"num_train": 8, "num_val": 4, "grid_size": 4},
    "digits": {},
}
NEEDS_FILES = {"cifar10", "imagefolder"}  # read from a local folder: files made below


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


# --- cifar10 and imagefolder: test on the dataset's test files, select on held-out training images


def write_classes(root, train=5, test=2):
    """``root/train/<class>/`` (each image a colour of its own) and ``root/val/<class>/`` (one
    grey picture for every image of every class), classes 'cat' and 'dog'."""
    for split, count in (("train", train), ("val", test)):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                rgb = (128, 128, 128) if split == "val" else (200 * c, 20 * i, 50)
                Image.new("RGB", (12, 10), rgb).save(root / split / cls / f"{i}.png")


def files(split, root):
    return [str(path.relative_to(root)) for path, _ in split.samples]


def test_imagefolder_tests_on_root_val_and_selects_on_train_images_held_out(tmp_path):
    write_classes(tmp_path)
    train, val, test = create_splits("imagefolder", root=str(tmp_path), val_fraction=0.4)
    assert files(test, tmp_path) == ["val/cat/0.png", "val/cat/1.png", "val/dog/0.png",
                                     "val/dog/1.png"]  # fmt: skip
    every = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "train").rglob("*.png"))
    assert sorted(files(train, tmp_path) + files(val, tmp_path)) == every  # disjoint, all
    assert val.labels.tolist() == [0, 0, 1, 1] and len(train) == 6  # 2 of each class's 5
    assert (train.flip, val.flip, test.flip) == (True, False, False)  # flips on train only
    assert len(create_splits("imagefolder", root=str(tmp_path)).val) == 2  # 0.01: 1 a class


@pytest.mark.parametrize(
    "train_images, options, message",
    [(5, dict(val_fraction=0.0), r"'val_fraction' should lie in \(0, 1\) but got 0.0"),
     (5, dict(split_seed=1.5), "'split_seed' should be an integer >= 0 but got 1.5"),
     (5, dict(val_fraction=0.95), r"class 'cat' has 5 training images: too few to hold out 5 for "
                                  r"val \(val_fraction=0.95\) and keep one for training"),
     (1, {}, r"class 'cat' has 1 training image: too few to hold out 1 for val "
             r"\(val_fraction=0.01\)")],
)  # fmt: skip
def test_bad_imagefolder_splits_are_refused_in_words(tmp_path, train_images, options, message):
    write_classes(tmp_path, train=train_images)
    with pytest.raises(ValueError, match=message):
        create_splits("imagefolder", root=str(tmp_path), **options)


def write_data(name, root):
    """Small files of dataset ``name`` whose test images are one picture, once per class."""
    if name == "imagefolder":
        return write_classes(root, train=10)
    write_cifar(root, per_batch=10)
    with (root / "test_batch").open("rb") as f:
        batch = pickle.load(f)
    batch[b"data"][:] = batch[b"data"][0]  # every test image the same, labels 0 to 9
    with (root / "test_batch").open("wb") as f:
        pickle.dump(batch, f)


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_held_out_val_is_the_same_for_every_run_seed_and_moves_with_split_seed(tmp_path, name):
    write_data(name, tmp_path / "data")

    def val(*overrides):
        cfg = compose_config([f"data={name}", f"data.options.root={tmp_path / 'data'}", *overrides])
        split = create_splits(name, **OmegaConf.to_container(cfg.data.options, resolve=True)).val
        return image_ids(split) if name == "cifar10" else files(split, tmp_path / "data")

    assert val("seed=1") == val("seed=2") == val("seed=3", "data.options.split_seed=0")
    assert val("seed=1", "data.options.split_seed=1") != val("seed=1")


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("imagefolder", 2)])
def test_a_run_reports_the_accuracy_of_the_test_files(tmp_path, name, classes):
    """Every test image is one picture, once per class: whatever the model learned, its test
    accuracy is 1 / classes exactly."""
    write_data(name, tmp_path / "data")
    result = train(compose_config([
        "trainer=debug", "trainer.progress=false", f"data={name}",
        f"data.options.root={tmp_path / 'data'}", "data.options.image_size=16",
        "data.patch_size=4", "+backbone.options.dim=32", "+backbone.options.depth=1",
        "trainer.batch_size=8", f"output_dir={tmp_path / 'run'}",
    ]))  # fmt: skip
    assert result.finished and result.test_acc == pytest.approx(1 / classes, abs=1e-9)
    assert result.val_acc is not None
