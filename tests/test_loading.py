"""Image files go through torch's DataLoader: the same batches for any number of workers."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffsort_reorder.config import compose_config
from diffsort_reorder.config_checks import check_config
from diffsort_reorder.data import batches, create_dataset
from diffsort_reorder.train import train


def write_photos(root, per_class=(10, 3)):
    """Two classes of noisy RGB images of mixed sizes, train and val."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for cls, base in (("dark", 60), ("light", 190)):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                size = (24 + 3 * i, 20 + 2 * (i % 3))
                pixels = rng.normal(base, 40, size=(size[1], size[0], 3)).clip(0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.png")


@pytest.mark.parametrize("num_workers", [1, 2])
def test_the_batches_are_the_same_for_any_number_of_workers(tmp_path, num_workers):
    write_photos(tmp_path)
    train_set, _ = create_dataset("imagefolder", root=str(tmp_path), image_size=16)
    assert not hasattr(train_set, "images")  # read from files: the DataLoader path

    def epoch(workers):
        gen = torch.Generator().manual_seed(7)
        return list(batches(train_set, 6, gen, num_workers=workers))

    reference, loaded = epoch(0), epoch(num_workers)
    assert [len(y) for _, y in reference] == [6, 6, 6, 2]
    assert len(loaded) == len(reference)
    for (x0, y0), (x1, y1) in zip(reference, loaded, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    shuffled = torch.cat([y for _, y in reference])
    assert not torch.equal(shuffled, train_set.labels)  # the generator shuffled them


def test_in_memory_datasets_are_sliced_in_the_same_order():
    train_set, _ = create_dataset("digits", image_size=8, seed=0)
    gen = torch.Generator().manual_seed(3)
    first = next(batches(train_set, 5, gen, num_workers=2))
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(3))[:5]
    assert torch.equal(first[0], train_set.images[order])


def test_a_run_on_image_files_is_the_same_with_workers(tmp_path):
    write_photos(tmp_path / "data")
    common = ["trainer=debug", "trainer.progress=false", "data=imagefolder",
              f"data.options.root={tmp_path / 'data'}", "data.options.image_size=16",
              "data.patch_size=4", "+backbone.options.dim=32", "+backbone.options.depth=1",
              "method=softsort", "trainer.epochs=2", "trainer.batch_size=4"]  # fmt: skip
    results = []
    for workers in (0, 2):
        extra = [f"output_dir={tmp_path / str(workers)}", f"trainer.num_workers={workers}"]
        results.append(train(compose_config([*common, *extra])))
    assert results[0]["finished"] and results[0]["steps"] == 10
    for key in ("val_acc", "val_loss", "order"):
        assert results[0][key] == results[1][key], key


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_num_workers(bad):
    with pytest.raises(ValueError, match="'num_workers' should be an int >= 0"):
        next(batches(create_dataset("digits", seed=0)[0], 4, None, num_workers=bad))
    with pytest.raises(ValueError, match="'trainer.num_workers' should be an integer >= 0"):
        check_config(compose_config([f"trainer.num_workers={bad}"]))
