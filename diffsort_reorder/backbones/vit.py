"""``vit``: timm transformer blocks with full attention, the order-invariant control.

With the ``patch`` positional embedding (each patch keeps its grid location's embedding wherever it
is placed) full attention sees the same set of tokens under any order, so its accuracy should not
depend on the order (REOrder: ~37.5% top-1 for every order).
"""

from __future__ import annotations

from timm.models.vision_transformer import Block
from torch import nn

from . import register_backbone
from .base import SequenceBackbone


@register_backbone("vit")
class ViTBackbone(SequenceBackbone):
    def __init__(
        self, *, dim, depth, num_heads, num_tokens, num_classes, readout="cls", mlp_ratio=4.0
    ) -> None:
        super().__init__(dim, num_classes, num_tokens, readout)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)
        )
