"""Image files go through torch's DataLoader: the same batches, flips included, for any number of
workers; one loader's workers serve every epoch of a run and end with it."""

import multiprocessing
import os
import time

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.datasets import load_sample_images

from diffsort_reorder.config import compose_config
from diffsort_reorder.data import BatchLoader, LazyImageDataset, batches, create_dataset, slots
from diffsort_reorder.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from diffsort_reorder.data.loading import batch_order
from diffsort_reorder.data.slots import SharedEpoch
from diffsort_reorder.orders.priors import prior_images
from diffsort_reorder.run.checks import check_config
from diffsort_reorder.run.loop import train

GREY_LEVEL = 1 / 255 / min(IMAGENET_STD)  # one uint8 step, normalised


def write_photos(root, per_class=(11, 3)):
    """Two classes of noisy RGB images of mixed sizes in train (one of each class's 11 is held out
    for val: 20 to train) and val (the test split)."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for cls, base in (("dark", 60), ("light", 190)):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                size = (24 + 3 * i, 20 + 2 * (i % 3))
                pixels = rng.normal(base, 40, size=(size[1], size[0], 3)).clip(0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.png")


def epochs(dataset, num_workers, seeds=(7, 8), batch_size=6):
    """The batches of one epoch per seed, from one loader (its workers persist across them)."""
    with BatchLoader(dataset, batch_size, num_workers) as loader:
        return [list(loader.epoch(torch.Generator().manual_seed(s))) for s in seeds]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_the_batches_are_the_same_for_any_number_of_workers(tmp_path, num_workers):
    write_photos(tmp_path)
    train_set, _ = create_dataset("imagefolder", root=str(tmp_path), image_size=16)
    assert not hasattr(train_set, "images")  # read from files: the DataLoader path
    reference, loaded = epochs(train_set, 0), epochs(train_set, num_workers)
    assert [[len(y) for _, y in epoch] for epoch in reference] == [[6, 6, 6, 2]] * 2
    for ref_epoch, epoch in zip(reference, loaded, strict=True):
        assert len(epoch) == len(ref_epoch)
        for (x0, y0), (x1, y1) in zip(ref_epoch, epoch, strict=True):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
    shuffled = torch.cat([y for _, y in reference[0]])
    assert not torch.equal(shuffled, train_set.labels)  # the generator shuffled them


def test_each_rank_reads_its_part_of_every_batch_flips_included(tmp_path):
    """Under DDP each rank's loader (with workers) gives its half of each global batch, images and
    flips exactly as one process reads them."""
    write_photos(tmp_path)
    train_set, _ = create_dataset("imagefolder", root=str(tmp_path), image_size=16)
    (whole,) = epochs(train_set, 0, seeds=(7,))
    parts = []
    for rank in (0, 1):
        with BatchLoader(train_set, 6, 1, rank=rank, world_size=2) as loader:
            parts.append(list(loader.epoch(torch.Generator().manual_seed(7))))
    assert [len(y) for _, y in parts[0]] == [3, 3, 3, 1]  # the last batch of 2: one image each
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_each_rank_evaluates_its_contiguous_part_of_the_set(tmp_path):
    """Evaluation under DDP: every image once over the ranks, in whole batches, none dropped."""
    from diffsort_reorder.data import create_splits

    write_photos(tmp_path)
    val_set = create_splits("imagefolder", root=str(tmp_path), image_size=16).test  # 6 images
    with BatchLoader(val_set, 2) as loader:
        whole = torch.cat([x for x, _ in loader.epoch(None)])
    parts = []
    for rank in (0, 1):
        with BatchLoader(val_set, 2, 1, rank=rank, world_size=2, split="set") as loader:
            parts.append([x for x, _ in loader.epoch(None)])
        with pytest.raises(ValueError, match="split='set' reads in order: generator=None"):
            next(loader.epoch(torch.Generator()))
    assert [[len(x) for x in part] for part in parts] == [[2, 1], [2, 1]]
    assert torch.equal(torch.cat([torch.cat(part) for part in parts]), whole)
    with pytest.raises(ValueError, match="'split' should be 'batches' or 'set' but got 'val'"):
        BatchLoader(val_set, 2, split="val")


def test_train_images_are_flipped_by_seed_epoch_and_index(tmp_path):
    write_photos(tmp_path)
    train_set, val_set = create_dataset("imagefolder", root=str(tmp_path), image_size=16)
    flips = []
    for seed, epoch in zip((7, 8), epochs(train_set, 2), strict=True):
        order = torch.cat(batch_order(len(train_set), 6, torch.Generator().manual_seed(seed)))
        images = torch.cat([x for x, _ in epoch])
        plain = torch.stack([train_set[int(i)][0] for i in order])  # an index alone: no flip
        flipped = [torch.equal(x, p.flip(-1)) for x, p in zip(images, plain, strict=True)]
        assert all(f or torch.equal(x, p) for f, x, p in zip(flipped, images, plain, strict=True))
        flips.append(dict(zip(order.tolist(), flipped, strict=True)))
    assert 0 < sum(flips[0].values()) < len(train_set)  # some flipped, some not
    assert flips[0] != flips[1]  # drawn anew each epoch
    val = list(batches(val_set, 4, torch.Generator().manual_seed(0), num_workers=2))
    val_order = torch.cat(batch_order(len(val_set), 4, torch.Generator().manual_seed(0)))
    plain = torch.stack([val_set[int(i)][0] for i in val_order])
    assert torch.equal(torch.cat([x for x, _ in val]), plain)  # validation: never flipped


def test_images_match_torchvision_transforms(tmp_path):
    """A real photo through our loader and through torchvision's ImageNet recipe."""
    from diffsort_reorder.data import create_splits

    photo = load_sample_images().images[0][:120:, 100:300]  # (120, 200, 3)
    for split in ("train", "val"):
        (tmp_path / split / "photo").mkdir(parents=True)
        Image.fromarray(photo).save(tmp_path / split / "photo" / "0.png")
    Image.fromarray(photo).save(tmp_path / "train" / "photo" / "1.png")  # one held out for val
    for image_size, resize_size in [(16, None), (224, None), (32, 100)]:
        test_set = create_splits(
            "imagefolder", root=str(tmp_path), image_size=image_size, resize_size=resize_size
        ).test
        recipe = T.Compose([T.Resize(resize_size or round(image_size * 256 / 224)),
                            T.CenterCrop(image_size), T.ToTensor(),
                            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])  # fmt: skip
        expected = recipe(Image.fromarray(photo))
        image = test_set[0][0]
        assert image.shape == expected.shape == (3, image_size, image_size)
        assert (image - expected).abs().max() <= GREY_LEVEL * 1.001


def test_defaults_are_reorders_base_size(tmp_path):
    write_photos(tmp_path)
    train_set, val_set = create_dataset("imagefolder", root=str(tmp_path))
    assert train_set.image_shape == val_set.image_shape == (3, 224, 224)
    assert (train_set.resize_size, train_set.flip, val_set.flip) == (256, True, False)
    assert train_set.normalize and val_set.normalize
    cfg = compose_config(["data=imagefolder", f"data.options.root={tmp_path}"])
    assert (cfg.data.options.image_size, cfg.data.patch_size) == (224, 16)  # a 14x14 grid
    raw, _ = create_dataset("imagefolder", root=str(tmp_path), image_size=8, normalize=False)
    assert 0.0 <= raw[0][0].min() and raw[0][0].max() <= 1.0


def test_priors_read_image_folders_in_the_unit_range(tmp_path):
    write_photos(tmp_path)
    train_set, _ = create_dataset("imagefolder", root=str(tmp_path), image_size=16)
    images = prior_images(train_set, 5, seed=0)  # what compression and collapse priors check
    assert images.shape == (5, 3, 16, 16) and 0.0 <= images.min() and images.max() <= 1.0
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:5]
    model_view = torch.stack([train_set[int(i)][0] for i in order])  # normalised
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(images, model_view * std + mean, atol=1e-6)


@pytest.mark.parametrize(
    "option, bad, message",
    [("image_size", 0, "'image_size' should be an integer >= 1 but got 0"),
     ("resize_size", 8, "'resize_size' should be an integer >= 16 but got 8"),
     ("flip", "yes", "'flip' should be true or false but got 'yes'"),
     ("normalize", 1, "'normalize' should be true or false but got 1")],
)  # fmt: skip
def test_bad_image_folder_options(tmp_path, option, bad, message):
    write_photos(tmp_path)
    options = {"image_size": 16, option: bad}
    with pytest.raises(ValueError, match=message):
        create_dataset("imagefolder", root=str(tmp_path), **options)


class WorkerPids(LazyImageDataset):
    """Each image holds the id of the process that made it (4 bytes)."""

    def __init__(self, n):
        self.labels = torch.zeros(n, dtype=torch.long)

    def raw(self, i, rng):
        return torch.tensor(list(os.getpid().to_bytes(4, "little")), dtype=torch.uint8)

    def to_float(self, images):
        return images.clone()  # a new tensor, as the loader asks (it reuses its slots)


def pids(batch_list):
    return {int.from_bytes(bytes(x.tolist()), "little") for images, _ in batch_list for x in images}


def test_workers_persist_across_epochs_and_stop_on_close():
    loader = BatchLoader(WorkerPids(12), 2, num_workers=2)
    first, second = (pids(loader.epoch(torch.Generator().manual_seed(s))) for s in (0, 1))
    assert len(first) == 2 and os.getpid() not in first
    assert first == second  # the same worker processes served both epochs
    live = {p.pid for p in multiprocessing.active_children()}
    assert first <= live
    loader.close()
    assert not first & {p.pid for p in multiprocessing.active_children()}
    assert pids(loader.epoch(None)) - first  # a later epoch starts new workers
    loader.close()


class WaitsForHelp(WorkerPids):
    """Image 0, made in a worker, waits (at most WAIT_S) until image 1 has been made."""

    WAIT_S = 60

    def __init__(self, n):
        super().__init__(n)
        self.helper = torch.zeros(1, dtype=torch.int64).share_memory_()  # pid that made image 1
        self.main = os.getpid()  # the loader reads image 0 here for its shape: no wait

    def raw(self, i, rng):
        if i == 1:
            self.helper[0] = os.getpid()
        deadline = time.monotonic() + self.WAIT_S * (os.getpid() != self.main)
        while i == 0 and not self.helper[0] and time.monotonic() < deadline:
            time.sleep(1e-3)
        return super().raw(i, rng)


def test_workers_decode_the_oldest_batch_together():
    """A DataLoader alone gives each batch to one worker: image 1 would wait for image 0, which
    waits for it (a minute, then the test fails). Here the idle worker takes image 1."""
    dataset = WaitsForHelp(8)
    with BatchLoader(dataset, 4, num_workers=2) as loader:
        first, second = list(loader.epoch(None))  # unshuffled: images 0-3, then 4-7
    makers = [int.from_bytes(bytes(x.tolist()), "little") for x in torch.cat([first[0], second[0]])]
    assert makers[1] == int(dataset.helper[0]) != makers[0]  # image 1 by the other worker
    assert os.getpid() not in makers


class FailsOnce(LazyImageDataset):
    """Image ``i`` holds ``i``; image ``broken`` raises the first ``times`` times it is made."""

    def __init__(self, n, broken, times):
        self.labels = torch.arange(n)
        self.broken, self.times = broken, times
        self.attempts = torch.zeros(1, dtype=torch.int64).share_memory_()

    def raw(self, i, rng):
        if i == self.broken:
            self.attempts[0] += 1
            if self.attempts[0] <= self.times:
                raise OSError(f"image {i} is truncated")
        return torch.tensor([i], dtype=torch.uint8)

    def to_float(self, images):
        return images.float()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_image_that_fails_is_made_again_by_its_batch(num_workers):
    """Whichever process first failed on image 5, the worker that answers its batch makes it
    again: a passing failure costs nothing, a lasting one is raised for that batch, in order."""
    once = FailsOnce(12, broken=5, times=1)
    with BatchLoader(once, 4, num_workers) as loader:
        images = torch.cat([x for x, _ in loader.epoch(None)])
    assert images.flatten().tolist() == list(range(12)) and int(once.attempts[0]) == 2
    always = FailsOnce(12, broken=5, times=99)
    got = []
    with BatchLoader(always, 4, num_workers) as loader:
        with pytest.raises(OSError, match="image 5 is truncated"):
            for x, _ in loader.epoch(None):
                got.append(x.flatten().tolist())
    assert got == [[0, 1, 2, 3]]  # the batch before came through


def test_a_worker_stops_waiting_when_the_main_process_ends(monkeypatch):
    """Waiting for other workers' images, or for a lock the main process died holding."""
    monkeypatch.setattr(slots, "ALIVE_S", 0.01)
    gone = multiprocessing.get_context("fork").Process(target=int)
    gone.start()
    gone.join()
    held = multiprocessing.Lock()
    held.acquire()
    items = SharedEpoch(WorkerPids(4), torch.zeros(1, 4, 4, dtype=torch.uint8), 1, 1, held)
    items.main_pid = gone.pid
    with pytest.raises(SystemExit, match=f"the main process {gone.pid} ended"):
        items._check_main_alive()
    with pytest.raises(SystemExit, match=f"the main process {gone.pid} ended"):
        with items._locked():
            pass


class OddShape(FailsOnce):
    def raw(self, i, rng):
        return torch.zeros(2 if i == 6 else 1, dtype=torch.uint8 if i != 9 else torch.int64)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_image_of_another_shape_is_refused_for_its_batch(num_workers):
    got = []
    with BatchLoader(OddShape(12, broken=None, times=0), 4, num_workers) as loader:
        with pytest.raises(ValueError, match=r"uint8 \(1,\) \(as image 0\) but image 6 is "
                                             r"torch.uint8 \(2,\)"):  # fmt: skip
            got.extend(len(x) for x, _ in loader.epoch(None))
    assert got == [4]


def test_one_loader_reads_one_epoch_at_a_time():
    """A loader's workers share one epoch's state: an older epoch's iterator stops, loudly."""
    with BatchLoader(FailsOnce(12, broken=None, times=0), 4, num_workers=2) as loader:
        older = loader.epoch(None)
        first = next(older)[0]
        newer = torch.cat([x for x, _ in loader.epoch(torch.Generator().manual_seed(1))])
        with pytest.raises(RuntimeError, match="a newer epoch of this BatchLoader has begun"):
            next(older)
    assert first.flatten().tolist() == [0, 1, 2, 3]  # unshuffled
    assert sorted(newer.flatten().tolist()) == list(range(12))  # the newer epoch, whole


def test_in_memory_datasets_are_sliced_in_the_same_order():
    train_set, _ = create_dataset("digits", image_size=8, seed=0)
    gen = torch.Generator().manual_seed(3)
    first = next(batches(train_set, 5, gen, num_workers=2))
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(3))[:5]
    assert torch.equal(first[0], train_set.images[order])
    loader = BatchLoader(train_set, 5, num_workers=2)
    again = next(loader.epoch(torch.Generator().manual_seed(3)))
    assert torch.equal(again[0], first[0])


def run_config(tmp_path, workers, *extra):
    return compose_config([
        "trainer=debug", "trainer.progress=false", "data=imagefolder",
        f"data.options.root={tmp_path / 'data'}", "data.options.image_size=16",
        "data.patch_size=4", "+backbone.options.dim=32", "+backbone.options.depth=1",
        "method=plackett_luce", "trainer.epochs=2", "trainer.curriculum.policy_epochs=2",
        "trainer.batch_size=4",
        f"output_dir={tmp_path / str(workers)}", f"trainer.num_workers={workers}", *extra,
    ])  # fmt: skip


def test_a_run_on_image_files_is_the_same_with_workers(tmp_path):
    """Plackett-Luce samples from the global generator in both epochs: a draw the loader made
    there for one worker count and not the other would change its orders."""
    write_photos(tmp_path / "data")
    before = set(multiprocessing.active_children())
    results = [train(run_config(tmp_path, workers)) for workers in (0, 2)]
    assert results[0].finished and results[0].steps == 10
    for key in ("val_acc", "val_loss", "order"):
        assert getattr(results[0], key) == getattr(results[1], key), key
    assert set(multiprocessing.active_children()) <= before  # the run stopped its workers


def test_a_failing_run_stops_its_workers(tmp_path):
    write_photos(tmp_path / "data")
    before = set(multiprocessing.active_children())

    def stop(epoch, metrics):
        assert set(multiprocessing.active_children()) - before  # workers alive mid-run
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run_config(tmp_path, 2), on_epoch=stop)
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_num_workers(bad):
    with pytest.raises(ValueError, match="'num_workers' should be an int >= 0"):
        next(batches(create_dataset("digits", seed=0)[0], 4, None, num_workers=bad))
    with pytest.raises(ValueError, match="'trainer.num_workers' should be an integer >= 0"):
        check_config(compose_config([f"trainer.num_workers={bad}"]))
