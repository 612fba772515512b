"""``planted_moving``: the planted task with the key patches at per-image random positions.

Symbols, codebook and label rule are those of ``planted`` (the keys' symbols summed, mod
``num_classes``), but every image draws its own key locations, and an extra marker channel shows
them (0.75 under a key patch, 0.25 elsewhere, plus the same pixel noise). No single order can put
the keys of every image where a sequence model reads, so a global order gains little; an order
chosen per image from what the patches show can put them all there.
"""

from __future__ import annotations

import torch

from .patches import unpatchify
from .planted import PlantedDataset, PlantedOptions, _draw_codebook, key_recall, make_planted


class MovingPlantedDataset(PlantedDataset):
    """Planted images whose ``key_positions (M, K)`` differ from image to image (each row
    sorted), with a last channel marking them."""

    split_offset = 7

    def is_key(self) -> torch.Tensor:
        """``(M, N)`` boolean: which patches of each image are keys."""
        mask = torch.zeros_like(self.symbols, dtype=torch.bool)
        return mask.scatter_(1, self.key_positions, True)

    def oracle_order(self) -> torch.Tensor:
        raise ValueError(
            "dataset MovingPlantedDataset defines no oracle order: its keys move from image to "
            "image (oracle_orders() gives one per image)"
        )

    def shared_keys(self) -> list[int] | None:
        return None  # no key patches common to every image

    def order_metrics(
        self, index: torch.Tensor, first: int, window: int | None = None
    ) -> dict[str, torch.Tensor]:
        keys = self.key_positions[first : first + index.shape[0]]  # (B, K): these images' keys
        return {"key_recall": key_recall(index, keys, window)}

    def oracle_orders(self) -> torch.Tensor:
        """``(M, N)``: each image's distractors in row-major order, then its keys."""
        return self.is_key().to(torch.int8).argsort(dim=1, stable=True)

    @staticmethod
    def draw_task(opts: PlantedOptions, generator: torch.Generator):
        """No shared keys: the task is its codebook."""
        return None, _draw_codebook(opts.num_symbols, opts.channels, opts.patch_size, generator)

    @staticmethod
    def draw_keys(opts: PlantedOptions, num: int, task_keys, generator) -> torch.Tensor:
        """``num_keys`` random patches per image, sorted: ``(M, K)``."""
        order = torch.rand(num, opts.num_tokens, generator=generator).argsort(1)  # (M, N)
        return order[:, : opts.num_keys].sort(1).values

    @staticmethod
    def add_channels(opts: PlantedOptions, content, keys, generator) -> torch.Tensor:
        """``content (M, C, H, W)`` and the marker channel: ``(M, C + 1, H, W)``."""
        num, n, p = content.shape[0], opts.num_tokens, opts.patch_size
        is_key = torch.zeros(num, n).scatter_(1, keys, 1.0)  # (M, N)
        marker = (0.25 + 0.5 * is_key)[..., None].expand(num, n, p**2)  # (M, N, p*p)
        marker = marker + opts.noise * torch.randn(marker.shape, generator=generator)
        side = opts.grid_size * p
        marker = unpatchify(marker.clamp(0.0, 1.0), p, side, side)  # (M, 1, H, W)
        return torch.cat([content, marker], dim=1)


def planted_moving(**options) -> tuple[MovingPlantedDataset, MovingPlantedDataset]:
    """Train and val splits (options: ``PlantedOptions``; ``task_seed`` seeds the codebook);
    images have ``channels + 1`` channels, the last one the marker."""
    return make_planted(MovingPlantedDataset, **options)
