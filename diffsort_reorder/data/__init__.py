"""Datasets by name: ``create_dataset(name, **options) -> (train, val)`` and
``create_splits(name, **options) -> Splits(train, val, test)``.

A factory returns ``(train, val)`` or ``(train, val, test)``: ``test`` is read once per run, after
its last epoch, and by nothing that selects (a study's search, pruner and best trial read val).

Every dataset yields ``(image (C, H, W) float, label int)`` and knows its ``image_shape`` and
``num_classes``; pixels lie in [0, 1] except where a dataset normalises them (image folders:
ImageNet's mean and std). ``None`` options are dropped, so a YAML ``null`` means the
loader's default.
"""

from __future__ import annotations

from typing import NamedTuple

from estimators.registry import Registry

from . import cifar10 as _cifar10
from . import imagefolder as _imagefolder
from .base import ImageDataset, LazyImageDataset, PatchDataset
from .cifar10 import cifar10
from .digits import digits
from .imagefolder import imagefolder
from .loading import BatchLoader, batches
from .patches import grid_shape, patchify, unpatchify
from .planted import PlantedDataset, key_recall, planted
from .planted_moving import MovingPlantedDataset, planted_moving

Dataset = PatchDataset
DATASETS = Registry("dataset")  # name -> factory(**options) -> (train, val)
DATASETS.register("planted", planted)
DATASETS.register("planted_moving", planted_moving)
DATASETS.register("digits", digits)
DATASETS.register("cifar10", cifar10)
DATASETS.register("imagefolder", imagefolder)


# Datasets read from a local folder (``root``): a check that the folder holds them, which reads
# nothing, so that a run or a study refuses a wrong folder before any training.
LOCATORS = {"cifar10": _cifar10.locate, "imagefolder": _imagefolder.locate}


def list_datasets() -> list[str]:
    return DATASETS.names()


def check_data_root(name: str, options: dict) -> None:
    """Raise FileNotFoundError (naming what is missing) unless dataset ``name``'s
    ``options["root"]`` holds its files; nothing for datasets made in memory."""
    if name in LOCATORS and options.get("root") is not None:
        LOCATORS[name](options["root"])


class Splits(NamedTuple):
    """A dataset's splits; ``test`` is None where the dataset has none."""

    train: Dataset
    val: Dataset
    test: Dataset | None = None


def create_splits(name: str, **options) -> Splits:
    """The train, val and (where the dataset has one) test splits of dataset ``name``."""
    return Splits(*DATASETS.create(name, **options))


def create_dataset(name: str, **options) -> tuple[Dataset, Dataset]:
    """The train and val splits of dataset ``name``."""
    splits = create_splits(name, **options)
    return splits.train, splits.val


__all__ = [
    "DATASETS",
    "BatchLoader",
    "ImageDataset",
    "LazyImageDataset",
    "MovingPlantedDataset",
    "PatchDataset",
    "PlantedDataset",
    "Splits",
    "batches",
    "check_data_root",
    "create_dataset",
    "create_splits",
    "grid_shape",
    "key_recall",
    "list_datasets",
    "patchify",
    "unpatchify",
]
