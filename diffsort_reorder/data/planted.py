"""``planted``: a synthetic task that is order-sensitive by construction.

Every patch shows one of ``num_symbols`` fixed patterns (a codebook drawn from the dataset seed)
plus pixel noise. A few key grid locations, also fixed by the dataset seed, decide the label:
``label = sum of the key patches' symbols mod num_classes`` (with binary symbols and the default
``num_classes = num_keys + 1`` it is the number of keys showing symbol 1), or with
``label="majority"`` whether more than half the keys show a symbol above 0 (two classes): every
key in view adds evidence, so an order that brings some keys into view already earns accuracy.
Every other patch is a distractor drawn from the same distribution as a key patch, so nothing in
a patch's content tells whether it matters; only its grid location does.

A backbone that must carry information across the sequence (a recurrent memory, a scan, a local
window) does best when the keys come last, next to where it reads out: ``oracle_order()`` is the
distractors in row-major order followed by the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int, check_number
from .base import ImageDataset
from .patches import patchify, unpatchify

LABELS = ("sum", "majority")
# Seed offsets of the splits: the same dataset seed gives the same keys and codebook for all three.
# The test split is a stream of its own, which no search, pruner or trial selection reads.
_SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}


@dataclass(frozen=True)
class PlantedOptions:
    """The options of every planted task, checked; ``num_classes=None`` becomes every value the
    key sum can take, ``num_keys * (num_symbols - 1) + 1``."""

    num_train: int = 2048
    num_val: int = 512
    num_test: int = 512
    grid_size: int = 8
    patch_size: int = 4
    channels: int = 1
    num_keys: int = 8
    num_symbols: int = 2
    num_classes: int | None = None
    label: str = "sum"
    noise: float = 0.1
    seed: int = 0
    task_seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "num_train",
            "num_val",
            "num_test",
            "grid_size",
            "patch_size",
            "channels",
            "num_keys",
        ):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        object.__setattr__(self, "num_symbols", check_int("num_symbols", self.num_symbols, 2))
        if self.num_keys > self.num_tokens:
            raise ValueError(
                f"'num_keys' should be at most the number of patches {self.num_tokens} but got "
                f"{self.num_keys}"
            )
        if self.label not in LABELS:
            raise ValueError(f"'label' should be one of {', '.join(LABELS)} but got {self.label!r}")
        num_classes = self.num_classes
        if self.label == "majority":
            if num_classes not in (None, 2):
                raise ValueError(f"'num_classes' should be 2 (or null) with label 'majority' but "
                                 f"got {num_classes}")  # fmt: skip
            num_classes = 2
        if num_classes is None:
            num_classes = self.num_keys * (self.num_symbols - 1) + 1
        object.__setattr__(self, "num_classes", check_int("num_classes", num_classes, 2))
        check_number("noise", self.noise, 0.0, strict=False)

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size


class PlantedDataset(ImageDataset):
    """Planted images whose key patches sit at the same grid locations in every image.

    A subclass changes where the keys are (``draw_task``, ``draw_keys``) and what the images show
    besides the symbols (``add_channels``); ``make_planted`` draws any of them in one order."""

    split_offset = 0  # added to each split's seed: another stream for another kind of task

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        *,
        symbols: torch.Tensor,
        key_positions: torch.Tensor,
        codebook: torch.Tensor,
        patch_size: int,
        noise: float,
    ) -> None:
        super().__init__(images, labels, num_classes)
        self.symbols = symbols  # (M, N) symbol shown by each patch
        self.key_positions = key_positions  # (K,) row-major grid indices, sorted (or (M, K))
        self.codebook = codebook  # (S, C, p, p)
        self.patch_size = patch_size
        self.noise = noise

    @property
    def grid_shape(self) -> tuple[int, int]:
        _, h, w = self.image_shape
        return h // self.patch_size, w // self.patch_size

    def oracle_order(self) -> torch.Tensor:
        """Distractors in row-major order, then the key patches (in row-major order)."""
        n = self.symbols.shape[1]
        is_key = torch.zeros(n, dtype=torch.bool)
        is_key[self.key_positions] = True
        every = torch.arange(n)
        return torch.cat([every[~is_key], every[is_key]])

    def shared_keys(self) -> list[int]:
        return self.key_positions.tolist()

    def order_metrics(
        self, index: torch.Tensor, first: int, window: int | None = None
    ) -> dict[str, torch.Tensor]:
        return {"key_recall": key_recall(index, self.key_positions, window)}

    def decode_symbols(self, images: torch.Tensor) -> torch.Tensor:
        """The nearest codebook symbol of every patch of ``images (M, C', H, W)`` -> ``(M, N)``,
        read from the codebook's ``C <= C'`` channels."""
        tokens = patchify(images[:, : self.codebook.shape[1]], self.patch_size)  # (M, N, D)
        patterns = self.codebook.flatten(1)  # (S, D)
        dist = torch.cdist(tokens, patterns.expand(tokens.shape[0], -1, -1))  # (M, N, S)
        return dist.argmin(-1)

    @staticmethod
    def draw_task(opts: PlantedOptions, generator: torch.Generator):
        """What every image shares: the key positions ``(K,)``, then the codebook."""
        keys = torch.randperm(opts.num_tokens, generator=generator)[: opts.num_keys].sort().values
        return keys, _draw_codebook(opts.num_symbols, opts.channels, opts.patch_size, generator)

    @staticmethod
    def draw_keys(opts: PlantedOptions, num: int, task_keys, generator) -> torch.Tensor:
        """The key positions of ``num`` images of a split: the task's own."""
        return task_keys

    @staticmethod
    def add_channels(opts: PlantedOptions, content, keys, generator) -> torch.Tensor:
        """The images from the symbols' ``content (M, C, H, W)``: nothing more to show."""
        return content


def key_recall(
    index: torch.Tensor, key_positions: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """The fraction of key patches that an order puts in the last ``window`` slots, the window the
    backbone reads best (``SequenceBackbone.readout_window``: Transformer-XL's last segment and
    its memory; None: the last ``K`` slots, for a backbone that reads its last token):
    ``index (B, N)``, ``key_positions (K,)`` or ``(B, K)`` (keys per image) -> ``(B,)``. The
    oracle order scores 1."""
    b, k = index.shape[0], key_positions.shape[-1]
    window = k if window is None else min(max(window, 1), index.shape[1])
    last = index[:, index.shape[1] - window :]  # (B, W)
    keys = key_positions.to(index.device).expand(b, k)  # (B, K)
    return (keys.unsqueeze(-1) == last.unsqueeze(-2)).any(-1).float().mean(-1)  # keys in view


def planted_labels(
    symbols: torch.Tensor, key_positions: torch.Tensor, num_classes: int, label: str = "sum"
):
    """The label rule: the key patches' symbols summed, mod ``num_classes`` (``sum``), or whether
    more than half of them are above 0 (``majority``). ``symbols (M, N)``,
    ``key_positions (K,)`` or ``(M, K)`` (keys per image) -> ``(M,)``."""
    keys = key_positions.expand(symbols.shape[0], key_positions.shape[-1])  # (M, K)
    shown = symbols.gather(1, keys)  # (M, K)
    if label == "majority":
        return (2 * (shown > 0).sum(1) > keys.shape[1]).long()
    return shown.sum(1) % num_classes


def render_planted(
    symbols: torch.Tensor,
    codebook: torch.Tensor,
    grid_size: int,
    noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Images ``(M, C, H, W)`` showing ``symbols (M, N)`` as codebook patterns plus pixel noise."""
    _, c, p, _ = codebook.shape
    tokens = codebook[symbols].flatten(2)  # (M, N, C*p*p)
    tokens = tokens + noise * torch.randn(tokens.shape, generator=generator)
    side = grid_size * p
    return unpatchify(tokens.clamp(0.0, 1.0), p, side, side)


def _draw_codebook(num_symbols: int, channels: int, patch_size: int, generator: torch.Generator):
    """Binary patterns at levels 0.25/0.75, redrawn until every pair differs in a quarter of its
    pixels, so that symbols stay distinguishable under the default noise."""
    dim = channels * patch_size * patch_size
    for _ in range(100):
        bits = torch.rand(num_symbols, dim, generator=generator) < 0.5
        if num_symbols == 1:
            break
        diff = (bits[:, None, :] != bits[None, :, :]).sum(-1)  # (S, S)
        diff.fill_diagonal_(dim)
        if diff.min() >= max(1, dim // 4):
            break
    else:
        raise ValueError(
            f"cannot draw {num_symbols} distinct patterns of {dim} pixels; "
            f"use fewer symbols or a larger 'patch_size'"
        )
    return (0.25 + 0.5 * bits.float()).reshape(num_symbols, channels, patch_size, patch_size)


def make_planted(dataset_class: type[PlantedDataset], **options):
    """The train, val and test splits of a planted task of kind ``dataset_class``, options as in
    ``PlantedOptions``. ``task_seed`` (``None``: ``seed``) seeds what every image shares;
    each split's images are drawn from ``seed``, the split and the kind's ``split_offset``, in
    this order: symbols, the split's keys, pixel noise, then the kind's extra channels."""
    opts = PlantedOptions(**options)
    task_seed = opts.seed if opts.task_seed is None else opts.task_seed
    task_keys, codebook = dataset_class.draw_task(opts, torch.Generator().manual_seed(task_seed))

    def split(name: str, num: int) -> PlantedDataset:
        stream = opts.seed * 1_000_003 + _SPLIT_STREAMS[name] + dataset_class.split_offset
        gen = torch.Generator().manual_seed(stream)
        symbols = torch.randint(opts.num_symbols, (num, opts.num_tokens), generator=gen)  # (M, N)
        keys = dataset_class.draw_keys(opts, num, task_keys, gen)  # (K,) or (M, K)
        content = render_planted(symbols, codebook, opts.grid_size, opts.noise, gen)
        images = dataset_class.add_channels(opts, content, keys, gen)  # (M, C', H, W)
        labels = planted_labels(symbols, keys, opts.num_classes, opts.label)
        return dataset_class(
            images, labels, opts.num_classes, symbols=symbols, key_positions=keys,
            codebook=codebook, patch_size=opts.patch_size, noise=opts.noise,
        )  # fmt: skip

    return split("train", opts.num_train), split("val", opts.num_val), split("test", opts.num_test)


def planted(**options) -> tuple[PlantedDataset, PlantedDataset]:
    """Build the train, val and test splits of the planted task (options: ``PlantedOptions``).
    ``task_seed`` fixes the task (the key positions and the symbol codebook), ``seed`` the images
    drawn from it; ``task_seed=None`` takes ``seed`` for both. A study pins ``task_seed``, so every
    seed run learns the same task from images of its own, and an order learned on one seed can be
    evaluated on another."""
    return make_planted(PlantedDataset, **options)
