"""The dataset protocol (:class:`PatchDataset`) and its two kinds: images held in memory
(:class:`ImageDataset`) and images made when read (:class:`LazyImageDataset`)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checks import check_int, is_real


class PatchDataset(Dataset):
    """What a run, a loader and a prior ask of a dataset; every dataset is one of the two kinds
    below, which provide the members marked "kind".

    Required: ``labels (M,)``, ``num_classes``, ``image_shape (C, H, W)``, ``__len__``,
    ``dataset[i] -> (image (C, H, W) float, label)``; ``in_memory`` and ``unit_images`` (kind).
    Optional, with the defaults below: ``oracle_order()`` (planted data: the best order),
    ``shared_keys()`` (key patches shared by every image, to mark in drawings) and
    ``order_metrics(index, first, window)`` (what an order achieves per image, beyond accuracy).
    """

    labels: torch.Tensor
    num_classes: int
    in_memory: bool

    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def unit_images(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` ``(M,)`` as float ``(M, C, H, W)`` in [0, 1], unflipped and not
        normalised (what the priors read)."""
        raise NotImplementedError

    def oracle_order(self) -> torch.Tensor:
        raise ValueError(
            f"dataset {type(self).__name__} defines no oracle order; only synthetic datasets "
            f"with planted key patches (e.g. 'planted') have one"
        )

    def shared_keys(self) -> list[int] | None:
        """The key patches, when every image has the same ones; else None."""
        return None

    def order_metrics(
        self, index: torch.Tensor, first: int, window: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-image scores ``(B,)`` of the hard orders ``index (B, N)`` of images ``first`` to
        ``first + B - 1``, by name; validation reports their means. ``window``: the last slots
        the backbone reads best (None: it has no such window). None by default (``{}``)."""
        return {}


class ImageDataset(PatchDataset):
    """Float images ``(C, H, W)`` in [0, 1] with integer labels, held in memory.

    The training loop slices ``images (M, C, H, W)`` and ``labels (M,)`` directly; datasets made
    when indexed are :class:`LazyImageDataset`. Either way the dataset knows its ``image_shape``
    and ``num_classes``, which is all the training loop asks of it.
    """

    in_memory = True

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        classes: list[str] | None = None,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"'images' should be (M, C, H, W) but got {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"'labels' should be ({images.shape[0]},) but got {tuple(labels.shape)}"
            )
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.num_classes = int(num_classes)
        self.classes = classes if classes is not None else [str(i) for i in range(num_classes)]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def unit_images(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]


class LazyImageDataset(PatchDataset):
    """Images made when indexed (decoded, cropped, flipped), for torch's DataLoader.

    A subclass sets ``labels (M,)``, ``num_classes``, ``classes`` and ``image_shape`` and defines
    ``raw(i, rng)``: image ``i`` as uint8 ``(C, H, W)`` (one shape for every image), its random
    transforms drawn from ``rng`` (None: none). DataLoader workers call ``raw_item`` and write
    the batch into the loader's shared uint8 slots, and the loader calls ``to_float`` once the
    batch is on its device; ``to_float`` returns a new tensor, as the slot is written again. A
    key is an index or ``(index, seed)``: the seed (the loader draws one per epoch) and the index
    alone decide the random transforms, so they do not depend on which worker reads the image.
    ``dataset[key]`` does both steps for one image.
    """

    in_memory = False

    def raw(self, i: int, rng: np.random.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> float ``(B, C, H', W')`` in [0, 1] (what priors read)."""
        return images / 255.0  # converts as it divides (one pass), the same bits as .float()

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> float ``(B, C, H', W')`` as the model reads it."""
        return self.to_unit(images)

    def __len__(self) -> int:
        return len(self.labels)

    def raw_item(self, key) -> tuple[torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        rng = None if seed is None else np.random.default_rng([seed, i])
        return self.raw(i, rng), int(self.labels[i])

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        image, label = self.raw_item(key)
        return self.to_float(image[None])[0], label

    def unit_images(self, index: torch.Tensor) -> torch.Tensor:
        return self.to_unit(torch.stack([self.raw_item(int(i))[0] for i in index]))


def split_indices(
    num: int, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> tuple[torch.Tensor, ...]:
    """A seeded random split of ``range(num)`` into train and val indices, and test indices after
    them when ``test_fraction > 0`` (then val is drawn as before and test from the rest, so a
    test split leaves val as it was)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"'val_fraction' should lie in (0, 1) but got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise ValueError(
            f"'test_fraction' should lie in [0, 1 - val_fraction = {1 - val_fraction:g}) but got "
            f"{test_fraction}"
        )
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    num_val = max(1, round(num * val_fraction))
    if test_fraction == 0.0:
        return perm[num_val:], perm[:num_val]
    num_test = max(1, round(num * test_fraction))
    return perm[num_val + num_test :], perm[:num_val], perm[num_val : num_val + num_test]


def resize_images(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Bilinear resize of ``(M, C, H, W)`` to ``image_size`` square; ``None`` keeps the size."""
    if image_size is None or tuple(images.shape[-2:]) == (image_size, image_size):
        return images
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"'image_size' should be a positive int or None but got {image_size!r}")
    resized = torch.nn.functional.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.clamp_(0.0, 1.0)


def held_out_count(num: int, val_fraction: float) -> int:
    """How many of a class's ``num`` training images :func:`split_by_class` holds out."""
    return max(1, round(num * val_fraction))


def split_by_class(
    labels: torch.Tensor, classes: list[str], val_fraction: float, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val indices (each ascending) of training images ``labels (M,)``: of each class's
    ``n`` images, ``round(n * val_fraction)`` (at least 1) held out for val, drawn by
    ``split_seed`` alone, so every run seed selects on the same images; each class keeps one."""
    if not is_real(val_fraction) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"'val_fraction' should lie in (0, 1) but got {val_fraction!r}")
    split_seed = check_int("split_seed", split_seed, 0)
    drawn = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    grouped = drawn[labels[drawn].sort(stable=True).indices]  # by class, each in drawn order
    sizes = torch.bincount(labels, minlength=len(classes)).tolist()
    held, start = [], 0
    for name, size in zip(classes, sizes, strict=True):
        count = held_out_count(size, val_fraction)
        if count >= size:
            images = f"{size} training image{'s' * (size != 1)}"
            raise ValueError(
                f"class {name!r} has {images}: too few to hold out {count} for val "
                f"(val_fraction={val_fraction}) and keep one for training; give it more images"
            )
        held.append(grouped[start : start + count])
        start += size
    val = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().squeeze(1), val
