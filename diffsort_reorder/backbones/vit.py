"""``vit``: timm transformer blocks with full attention, the order-invariant control.

With the ``patch`` positional embedding (each patch keeps its grid location's embedding wherever it
is placed) full attention sees the same set of tokens under any order, so its accuracy should not
depend on the order (REOrder: ~37.5% top-1 for every order).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from . import register_backbone
from .base import SequenceBackbone


def check_num_blocks(num_blocks: int, depth: int) -> None:
    if (
        isinstance(num_blocks, bool)
        or not isinstance(num_blocks, int)
        or not 0 <= num_blocks <= depth
    ):
        raise ValueError(f"'num_blocks' should be an int in [0, {depth}] but got {num_blocks!r}")


@register_backbone("vit")
class ViTBackbone(SequenceBackbone):
    def __init__(
        self, *, dim, depth, num_heads, num_tokens, num_classes, readout="cls", mlp_ratio=4.0
    ) -> None:
        super().__init__(dim, num_classes, num_tokens, readout)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)
        )

    def features(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Hidden states ``(B, P + N, D)`` after the first ``num_blocks`` blocks."""
        self.check_input(x)
        check_num_blocks(num_blocks, len(self.blocks))
        h = self.add_prefix(x)
        for block in self.blocks[:num_blocks]:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x, len(self.blocks)))
