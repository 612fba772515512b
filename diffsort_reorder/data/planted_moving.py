"""``planted_moving``: the planted task with the key patches at per-image random positions.

Symbols, codebook and label rule are those of ``planted`` (the keys' symbols summed, mod
``num_classes``), but every image draws its own key locations, and an extra marker channel shows
them (0.75 under a key patch, 0.25 elsewhere, plus the same pixel noise). No single order can put
the keys of every image where a sequence model reads, so a global order gains little; an order
chosen per image from what the patches show can put them all there.
"""

from __future__ import annotations

import torch

from .base import ImageDataset
from .patches import unpatchify
from .planted import _SPLIT_STREAMS, _draw_codebook, check_options, key_recall, render_planted


class MovingPlantedDataset(ImageDataset):
    def __init__(self, images, labels, num_classes, *, symbols, key_positions, codebook,
                 patch_size, noise):  # fmt: skip
        super().__init__(images, labels, num_classes)
        self.symbols = symbols  # (M, N)
        self.key_positions = key_positions  # (M, K): each image's own keys, sorted
        self.codebook = codebook  # (S, C, p, p)
        self.patch_size = patch_size
        self.noise = noise

    def is_key(self) -> torch.Tensor:
        """``(M, N)`` boolean: which patches of each image are keys."""
        mask = torch.zeros_like(self.symbols, dtype=torch.bool)
        return mask.scatter_(1, self.key_positions, True)

    def oracle_order(self) -> torch.Tensor:
        raise ValueError(
            "dataset MovingPlantedDataset defines no oracle order: its keys move from image to "
            "image (oracle_orders() gives one per image)"
        )

    def order_metrics(self, index: torch.Tensor, first: int) -> dict[str, torch.Tensor]:
        keys = self.key_positions[first : first + index.shape[0]]  # (B, K): these images' keys
        return {"key_recall": key_recall(index, keys)}

    def oracle_orders(self) -> torch.Tensor:
        """``(M, N)``: each image's distractors in row-major order, then its keys."""
        return self.is_key().to(torch.int8).argsort(dim=1, stable=True)


def planted_moving(
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
) -> tuple[MovingPlantedDataset, MovingPlantedDataset]:
    """Train and val splits; images have ``channels + 1`` channels, the last one the marker."""
    num_classes = check_options(num_train, num_val, grid_size, patch_size, channels, num_keys,
                                num_symbols, num_classes, noise)  # fmt: skip
    n = grid_size * grid_size
    codebook = _draw_codebook(
        num_symbols, channels, patch_size, torch.Generator().manual_seed(seed)
    )

    def split(name: str, num: int) -> MovingPlantedDataset:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + _SPLIT_STREAMS[name] + 7)
        symbols = torch.randint(num_symbols, (num, n), generator=gen)
        keys = torch.rand(num, n, generator=gen).argsort(1)[:, :num_keys].sort(1).values  # (M, K)
        content = render_planted(symbols, codebook, grid_size, noise, gen)  # (M, C, H, W)
        is_key = torch.zeros(num, n).scatter_(1, keys, 1.0)  # (M, N)
        marker = (0.25 + 0.5 * is_key)[..., None].expand(num, n, patch_size**2)  # (M, N, p*p)
        marker = marker + noise * torch.randn(marker.shape, generator=gen)
        side = grid_size * patch_size
        marker = unpatchify(marker.clamp(0.0, 1.0), patch_size, side, side)  # (M, 1, H, W)
        labels = symbols.gather(1, keys).sum(1) % num_classes
        return MovingPlantedDataset(
            torch.cat([content, marker], dim=1), labels, num_classes, symbols=symbols,
            key_positions=keys, codebook=codebook, patch_size=patch_size, noise=noise,
        )  # fmt: skip

    return split("train", num_train), split("val", num_val)
