"""``planted``: a synthetic task that is order-sensitive by construction.

Every patch shows one of ``num_symbols`` fixed patterns (a codebook drawn from the dataset seed)
plus pixel noise. A few key grid locations, also fixed by the dataset seed, decide the label:
``label = sum of the key patches' symbols mod num_classes`` (with binary symbols and the default
``num_classes = num_keys + 1`` it is the number of keys showing symbol 1). Every other patch is a
distractor drawn from the same distribution as a key patch, so nothing in a patch's content tells
whether it matters; only its grid location does.

A backbone that must carry information across the sequence (a recurrent memory, a scan, a local
window) does best when the keys come last, next to where it reads out: ``oracle_order()`` is the
distractors in row-major order followed by the keys.
"""

from __future__ import annotations

import torch

from estimators._checks import check_count

from .base import ImageDataset
from .patches import patchify, unpatchify

# Seed offsets of the two splits: the same dataset seed gives the same keys and codebook for both.
_SPLIT_STREAMS = {"train": 1, "val": 2}


class PlantedDataset(ImageDataset):
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
        self.key_positions = key_positions  # (K,) row-major grid indices, sorted
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

    def order_metrics(self, index: torch.Tensor, first: int) -> dict[str, torch.Tensor]:
        return {"key_recall": key_recall(index, self.key_positions)}

    def decode_symbols(self, images: torch.Tensor) -> torch.Tensor:
        """The nearest codebook symbol of every patch of ``images (M, C, H, W)`` -> ``(M, N)``."""
        tokens = patchify(images, self.patch_size)  # (M, N, D)
        patterns = self.codebook.flatten(1)  # (S, D)
        dist = torch.cdist(tokens, patterns.expand(tokens.shape[0], -1, -1))  # (M, N, S)
        return dist.argmin(-1)


def key_recall(index: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """The fraction of key patches that an order puts in its last ``K`` slots, where a backbone
    that reads its last token reads best: ``index (B, N)``, ``key_positions (K,)`` or ``(B, K)``
    (keys per image) -> ``(B,)``. The oracle order scores 1."""
    b, k = index.shape[0], key_positions.shape[-1]
    last = index[:, index.shape[1] - k :]  # (B, K)
    keys = key_positions.to(index.device).expand(b, k)  # (B, K)
    return (last.unsqueeze(-1) == keys.unsqueeze(-2)).any(-1).float().mean(-1)


def planted_labels(symbols: torch.Tensor, key_positions: torch.Tensor, num_classes: int):
    """The label rule: the key patches' symbols summed, mod ``num_classes``. ``(M, N) -> (M,)``."""
    return symbols[:, key_positions].sum(1) % num_classes


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


def check_options(
    num_train, num_val, grid_size, patch_size, channels, num_keys, num_symbols, num_classes, noise
) -> int:
    """Validate the planted options shared by ``planted`` and ``planted_moving``; returns
    ``num_classes`` (by default every value the key sum can take)."""
    for name, value in (
        ("num_train", num_train),
        ("num_val", num_val),
        ("grid_size", grid_size),
        ("patch_size", patch_size),
        ("channels", channels),
        ("num_keys", num_keys),
    ):
        check_count(name, value)
    check_count("num_symbols", num_symbols, minimum=2)
    num_tokens = grid_size * grid_size
    if num_keys > num_tokens:
        raise ValueError(
            f"'num_keys' should be at most the number of patches {num_tokens} but got {num_keys}"
        )
    if num_classes is None:
        num_classes = num_keys * (num_symbols - 1) + 1
    check_count("num_classes", num_classes, minimum=2)
    if not noise >= 0.0:
        raise ValueError(f"'noise' should be >= 0 but got {noise}")
    return num_classes


def planted(
    *,
    num_train: int = 2048,
    num_val: int = 512,
    grid_size: int = 8,
    patch_size: int = 4,
    channels: int = 1,
    num_keys: int = 8,
    num_symbols: int = 2,
    num_classes: int | None = None,
    noise: float = 0.1,
    seed: int = 0,
    task_seed: int | None = None,
) -> tuple[PlantedDataset, PlantedDataset]:
    """Build the train and val splits of the planted task. ``task_seed`` fixes the task (the key
    positions and the symbol codebook), ``seed`` the images drawn from it; ``task_seed=None``
    takes ``seed`` for both. A study pins ``task_seed``, so every seed run learns the same task
    from images of its own, and an order learned on one seed can be evaluated on another."""
    num_tokens = grid_size * grid_size
    num_classes = check_options(num_train, num_val, grid_size, patch_size, channels, num_keys,
                                num_symbols, num_classes, noise)  # fmt: skip

    generator = torch.Generator().manual_seed(seed if task_seed is None else task_seed)
    key_positions = torch.randperm(num_tokens, generator=generator)[:num_keys].sort().values
    codebook = _draw_codebook(num_symbols, channels, patch_size, generator)

    def split(name: str, num: int) -> PlantedDataset:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + _SPLIT_STREAMS[name])
        symbols = torch.randint(num_symbols, (num, num_tokens), generator=gen)
        images = render_planted(symbols, codebook, grid_size, noise, gen)
        labels = planted_labels(symbols, key_positions, num_classes)
        return PlantedDataset(
            images,
            labels,
            num_classes,
            symbols=symbols,
            key_positions=key_positions,
            codebook=codebook,
            patch_size=patch_size,
            noise=noise,
        )

    return split("train", num_train), split("val", num_val)
