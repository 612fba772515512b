"""Datasets: the planted task's guarantees and every loader on small files made here."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from diffsort_reorder.data import (
    batches,
    create_dataset,
    create_splits,
    key_recall,
    list_datasets,
    patchify,
    unpatchify,
)
from diffsort_reorder.data.base import resize_images
from diffsort_reorder.data.cifar10 import TEST_FILE, TRAIN_FILES
from diffsort_reorder.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from diffsort_reorder.data.planted import planted_labels, render_planted

SMALL = dict(num_train=256, num_val=64)


# --- patchify -------------------------------------------------------------------------------


def test_patchify_puts_patches_in_row_major_order():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = patchify(images, 2)  # grid 2x3
    assert tokens.shape == (2, 6, 3 * 2 * 2)
    for k in range(6):
        r, c = divmod(k, 3)
        patch = images[:, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]  # (B, C, p, p)
        assert torch.equal(tokens[:, k], patch.reshape(2, -1))
    assert torch.equal(unpatchify(tokens, 2, 4, 6), images)


def test_patch_size_that_does_not_divide_is_rejected():
    with pytest.raises(ValueError, match="'patch_size' 3 does not divide the image size 8x8"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="'patch_size' should be a positive int but got 0"):
        patchify(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="4d-tensor"):
        patchify(torch.zeros(8, 8), 2)


# --- registry -------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_names():
    assert {"planted", "digits", "cifar10", "imagefolder"} <= set(list_datasets())
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10.*digits.*planted"):
        create_dataset("mnist")


def test_none_options_mean_defaults():
    train, _ = create_dataset("planted", num_train=32, num_val=8, noise=None, grid_size=None)
    assert train.image_shape == (1, 32, 32)  # the default 8x8 grid of 4x4 patches


# --- planted --------------------------------------------------------------------------------


def test_planted_is_reproducible_from_its_seed():
    a_train, a_val = create_dataset("planted", seed=3, **SMALL)
    b_train, b_val = create_dataset("planted", seed=3, **SMALL)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_val.images, b_val.images)
    assert torch.equal(a_train.labels, b_train.labels)
    assert torch.equal(a_train.key_positions, b_train.key_positions)
    assert not torch.equal(a_train.images[:64], a_val.images)  # the splits are different draws


def test_planted_seeds_move_the_keys():
    keys = {
        tuple(create_dataset("planted", seed=s, **SMALL)[0].key_positions.tolist())
        for s in range(6)
    }
    assert len(keys) == 6


def test_planted_images_are_valid():
    train, val = create_dataset("planted", seed=0, num_keys=4, **SMALL)
    assert train.images.shape == (256, 1, 32, 32) and len(val) == 64
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    image, label = train[5]
    assert image.shape == (1, 32, 32) and isinstance(label, int)
    assert set(train.labels.tolist()) == set(range(train.num_classes))  # every class occurs


def test_planted_pixels_encode_the_symbols():
    train, _ = create_dataset("planted", seed=1, **SMALL)
    assert torch.equal(train.decode_symbols(train.images), train.symbols)
    keys = train.decode_symbols(train.images)
    assert torch.equal(planted_labels(keys, train.key_positions, train.num_classes), train.labels)


def test_planted_label_depends_on_key_patches_alone():
    train, _ = create_dataset("planted", seed=2, **SMALL)
    keys = train.key_positions
    is_key = torch.zeros(train.symbols.shape[1], dtype=torch.bool)
    is_key[keys] = True
    gen = torch.Generator().manual_seed(123)

    # Re-draw every distractor (and all pixel noise): the labels of the new images never change.
    symbols = train.symbols.clone()
    symbols[:, ~is_key] = torch.randint(2, symbols[:, ~is_key].shape, generator=gen)
    assert (symbols != train.symbols).any()
    images = render_planted(symbols, train.codebook, 8, train.noise, gen)
    redrawn = planted_labels(train.decode_symbols(images), keys, train.num_classes)
    assert torch.equal(redrawn, train.labels)

    # Change one key patch: the label changes for some images.
    symbols = train.symbols.clone()
    symbols[:, keys[0]] = 1 - symbols[:, keys[0]]
    images = render_planted(symbols, train.codebook, 8, train.noise, gen)
    changed = planted_labels(train.decode_symbols(images), keys, train.num_classes)
    assert (changed != train.labels).any()


def test_planted_distractors_look_like_keys():
    train, _ = create_dataset("planted", seed=0, num_train=4096, num_val=8)
    is_key = torch.zeros(train.symbols.shape[1], dtype=torch.bool)
    is_key[train.key_positions] = True
    tokens = patchify(train.images, 4)  # (M, N, 16)
    assert abs(float(tokens[:, is_key].mean() - tokens[:, ~is_key].mean())) < 0.01
    key_freq = train.symbols[:, is_key].float().mean()
    distractor_freq = train.symbols[:, ~is_key].float().mean()
    assert abs(float(key_freq - distractor_freq)) < 0.02


def test_planted_oracle_order_puts_keys_last():
    train, val = create_dataset("planted", seed=4, num_keys=5, **SMALL)
    order = train.oracle_order()
    n = 64
    assert torch.equal(order.sort().values, torch.arange(n))
    assert torch.equal(order[-5:], train.key_positions)
    assert torch.equal(order[:-5], order[:-5].sort().values)  # distractors row-major
    assert torch.equal(order, val.oracle_order())


def test_planted_options():
    train, _ = create_dataset(
        "planted", grid_size=6, patch_size=2, channels=3, num_keys=2, num_symbols=3, **SMALL
    )
    assert train.image_shape == (3, 12, 12) and train.num_classes == 5
    assert train.grid_shape == (6, 6)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(num_keys=65), "'num_keys' should be at most the number of patches 64 but got 65"),
        (dict(num_symbols=1), "'num_symbols' should be an integer >= 2 but got 1"),
        (dict(grid_size=0), "'grid_size' should be an integer >= 1 but got 0"),
        (dict(noise=-0.1), "'noise' should be a number >= 0"),
    ],
)
@pytest.mark.parametrize("name", ["planted", "planted_moving"])
def test_planted_bad_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_dataset(name, **options)


def test_datasets_without_oracle_say_so():
    train, _ = create_dataset("digits")
    with pytest.raises(ValueError, match="defines no oracle order"):
        train.oracle_order()


# --- digits ---------------------------------------------------------------------------------


def test_digits_split_is_seeded_and_complete():
    train, val = create_dataset("digits", seed=0, test_fraction=0.0)
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert train.image_shape == (1, 8, 8) and train.num_classes == 10
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0 and train.images.max() > 0.9
    again, _ = create_dataset("digits", seed=0, test_fraction=0.0)
    other, _ = create_dataset("digits", seed=1, test_fraction=0.0)
    pinned, _ = create_dataset("digits", seed=1, split_seed=0, test_fraction=0.0)
    assert torch.equal(train.images, again.images) and torch.equal(train.images, pinned.images)
    assert not torch.equal(train.labels, other.labels)


def test_digits_upscaled():
    train, val = create_dataset("digits", image_size=16)
    assert train.image_shape == (1, 16, 16) and val.images.shape[1:] == (1, 16, 16)
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0


# --- cifar10 --------------------------------------------------------------------------------


def write_cifar(folder, per_batch=4):
    """CIFAR-10 python pickles; pixel (c, y, x) of image i holds (i + c + y + x) % 256."""
    folder.mkdir(parents=True)
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    for b, name in enumerate([*TRAIN_FILES, TEST_FILE]):
        ids = np.arange(per_batch) + b * per_batch
        data = np.stack([((i + c + y + x) % 256).astype(np.uint8).reshape(-1) for i in ids])
        batch = {b"batch_label": name.encode(), b"data": data,
                 b"labels": [int(i % 10) for i in ids],
                 b"filenames": [f"{i}.png".encode() for i in ids]}  # fmt: skip
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)


def image_ids(dataset):
    """Each image's id in ``write_cifar`` (its pixel (0, 0, 0)), in the split's order."""
    units = dataset.unit_images(torch.arange(len(dataset)))  # (M, 3, 32, 32) in [0, 1]
    return (units[:, 0, 0, 0] * 255).round().long().tolist()


def test_cifar10_reads_the_python_batches(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    train, val, test = create_splits("cifar10", root=str(tmp_path))  # finds the nested folder
    assert (len(train), len(val), len(test)) == (10, 10, 4)  # 1 of each class's 2 held out
    assert train.image_shape == (3, 32, 32) and train.num_classes == 10
    i = image_ids(train)[3]
    image, label = train[3]
    assert label == i % 10
    assert image[2, 5, 9] == pytest.approx((i + 2 + 5 + 9) / 255.0)
    assert test[1][0][0, 0, 0] == pytest.approx(21 / 255.0) and test[1][1] == 1
    small, _ = create_dataset("cifar10", root=str(tmp_path), image_size=16, train_limit=6)
    assert len(small) == 6 and small.image_shape == (3, 16, 16)
    assert small[4][0].shape == (3, 16, 16)
    assert torch.equal(small[4][0], resize_images(train[4][0][None], 16)[0])  # as in memory before


def test_cifar10_batches_come_through_the_dataloader(tmp_path):
    write_cifar(tmp_path / "c")
    train, _ = create_dataset("cifar10", root=str(tmp_path / "c"), image_size=16)
    assert not hasattr(train, "images")  # the DataLoader path, as image files

    def epoch(workers):
        return list(batches(train, 6, torch.Generator().manual_seed(1), num_workers=workers))

    reference = epoch(0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        torch.cat([x for x, _ in reference]), torch.stack([train[int(i)][0] for i in order])
    )
    assert torch.equal(torch.cat([y for _, y in reference]), train.labels[order])
    for (x0, y0), (x1, y1) in zip(reference, epoch(2), strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_cifar10_tests_on_test_batch_and_selects_on_training_images_held_out(tmp_path):
    """test: test_batch, whole; val: images of the training batches, drawn per class and
    removed from train; the limits cap each split."""
    write_cifar(tmp_path / "c", per_batch=10)  # 50 training images, 5 of each class; 10 test
    root = str(tmp_path / "c")
    train, val, test = create_splits("cifar10", root=root, val_fraction=0.4)
    assert image_ids(test) == list(range(50, 60)) and test.labels.tolist() == list(range(10))
    assert sorted(image_ids(train) + image_ids(val)) == list(range(50))  # disjoint, all of them
    assert len(val) == 20 and sorted(val.labels.tolist()) == sorted(list(range(10)) * 2)
    assert [i % 10 for i in image_ids(val)] == val.labels.tolist()  # each with its own label
    assert len(create_splits("cifar10", root=root).val) == 10  # default 0.1: at least 1 a class
    limits = dict(train_limit=7, val_limit=3, test_limit=4)
    small = create_splits("cifar10", root=root, val_fraction=0.4, **limits)
    assert image_ids(small.train) == image_ids(train)[:7]
    assert image_ids(small.val) == image_ids(val)[:3]
    assert image_ids(small.test) == list(range(50, 54))


@pytest.mark.parametrize(
    "options, message",
    [(dict(val_fraction=1.0), r"'val_fraction' should lie in \(0, 1\) but got 1.0"),
     (dict(val_fraction="0.1"), r"'val_fraction' should lie in \(0, 1\) but got '0.1'"),
     (dict(val_fraction=0.95), r"class 'airplane' has 5 training images: too few to hold out 5 "
                               r"for val \(val_fraction=0.95\) and keep one for training"),
     (dict(split_seed=-1), "'split_seed' should be an integer >= 0 but got -1"),
     (dict(val_limit=0), "'val_limit' should be an integer >= 1 but got 0"),
     (dict(test_limit=1.5), "'test_limit' should be an integer >= 1 but got 1.5"),
     (dict(train_limit=True), "'train_limit' should be an integer >= 1 but got True")],
)  # fmt: skip
def test_cifar10_bad_split_options_are_refused_in_words(tmp_path, options, message):
    write_cifar(tmp_path / "c", per_batch=10)
    with pytest.raises(ValueError, match=message):
        create_splits("cifar10", root=str(tmp_path / "c"), **options)


def test_cifar10_missing_files_are_named(tmp_path):
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"c'.*missing data_batch_3.*test_batch"):
        create_dataset("cifar10", root=str(tmp_path / "c"))


# --- imagefolder ----------------------------------------------------------------------------


def write_folder(root):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, count in (("train", 3), ("val", 1)):
        for cls, rgb in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40 + 10 * i, 30), rgb).save(root / split / cls / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_imagefolder_reads_classes_and_resizes(tmp_path):
    write_folder(tmp_path)
    train, val, test = create_splits("imagefolder", root=str(tmp_path), image_size=16)
    assert train.classes == ["cat", "dog"] and train.num_classes == 2
    assert (len(train), len(val), len(test)) == (4, 2, 2)  # 1 of each class's 3 held out
    assert train.labels.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 1]
    image, label = train[3]
    assert image.shape == (3, 16, 16) and label == 1
    blue = (torch.tensor([0.0, 0.0, 1.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    assert torch.allclose(image.mean((1, 2)), blue, atol=1e-3)  # normalised as ImageNet


def test_imagefolder_without_val_split(tmp_path):
    write_folder(tmp_path)
    for path in sorted((tmp_path / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(FileNotFoundError, match="'train' and 'val' folders"):
        create_dataset("imagefolder", root=str(tmp_path))


def test_key_recall_counts_keys_in_the_last_slots():
    index = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    assert key_recall(index, torch.tensor([3, 4])).tolist() == [1.0, 0.0]
    assert key_recall(index, torch.tensor([[1, 4], [1, 4]])).tolist() == [0.5, 0.5]  # per image
    train, _ = create_dataset("planted", num_train=4, num_val=4, grid_size=4, num_keys=3)
    oracle = train.oracle_order().unsqueeze(0)  # (1, 16)
    assert key_recall(oracle, train.key_positions).item() == 1.0
    assert key_recall(torch.arange(16).unsqueeze(0), train.key_positions).item() < 1.0
