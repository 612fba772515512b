"""What every backbone shares: sizes, the readout, the classification head, ``features`` and
``forward``.

A backbone takes patch tokens ``(B, N, D)`` already in sequence order and returns class logits
``(B, num_classes)``. One that reads a CLS token owns it: it prepends its own learned token at
slot 0 (``readout="cls"``); ``"last"`` reads the final token (as ARM/Mamba do) and ``"mean"``
averages the patch tokens. Positional embeddings are added before the backbone
(see ``diffsort_reorder.model``).

A backbone module provides only what differs: after ``SequenceBackbone.__init__`` it builds
``self.blocks`` (an ``nn.ModuleList``), and it overrides ``run_blocks`` when its blocks take more
than the hidden states (the prefix count, a memory carried across segments).
"""

from __future__ import annotations

import torch
from torch import nn

READOUTS = ("cls", "last", "mean")

# dim, depth, num_heads: tiny for CPU tests and studies, small/base for GPU runs.
SIZES = {
    "tiny": dict(dim=64, depth=2, num_heads=4),
    "small": dict(dim=384, depth=12, num_heads=6),
    "base": dict(dim=768, depth=12, num_heads=12),
}


def check_num_blocks(num_blocks: int, depth: int) -> None:
    if (
        isinstance(num_blocks, bool)
        or not isinstance(num_blocks, int)
        or not 0 <= num_blocks <= depth
    ):
        raise ValueError(f"'num_blocks' should be an int in [0, {depth}] but got {num_blocks!r}")


class SequenceBackbone(nn.Module):
    """Base class: holds the optional CLS token, the final norm and the head, and runs the
    subclass's ``blocks`` on the tokens."""

    blocks: nn.ModuleList

    def __init__(self, dim: int, num_classes: int, num_tokens: int, readout: str) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"'readout' should be one of {READOUTS} but got {readout!r}")
        for name, value in (("dim", dim), ("num_classes", num_classes), ("num_tokens", num_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' should be a positive int but got {value!r}")
        self.dim, self.num_classes, self.num_tokens, self.readout = (
            dim,
            num_classes,
            num_tokens,
            readout,
        )
        self.num_prefix_tokens = 1 if readout == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if readout == "cls" else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"'x' should be (B, N, {self.dim}) but got {tuple(x.shape)}")
        if x.shape[1] > self.num_tokens:
            raise ValueError(
                f"'x' has {x.shape[1]} tokens but the backbone was built for at most "
                f"{self.num_tokens}"
            )

    def add_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the CLS token when the readout uses one: ``(B, N, D) -> (B, P + N, D)``."""
        if self.cls_token is None:
            return x
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the final hidden states ``(B, P + N, D)``."""
        if self.readout == "cls":
            pooled = h[:, 0]
        elif self.readout == "last":
            pooled = h[:, -1]
        else:
            pooled = h[:, self.num_prefix_tokens :].mean(1)
        return self.head(self.norm(pooled))

    def readout_window(self) -> int | None:
        """How many of the last sequence slots this backbone reads best, where that is a property
        of the architecture (a Transformer-XL's last segment and its memory); None where every
        slot is read alike or no such window exists (a CLS token attending everything, a scan
        read at its end). Planted data's ``key_recall`` counts the keys in this window."""
        return None

    def run_blocks(self, h: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        """Hidden states ``(B, P + N, D)`` after ``blocks`` in turn, each ``h -> block(h)``."""
        for block in blocks:
            h = block(h)
        return h

    def features(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Hidden states ``(B, P + N, D)`` after the first ``num_blocks`` blocks (0 = the input
        with its prefix)."""
        self.check_input(x)
        check_num_blocks(num_blocks, len(self.blocks))
        return self.run_blocks(self.add_prefix(x), self.blocks[:num_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` patch tokens in sequence order -> ``(B, num_classes)`` logits."""
        return self.classify(self.features(x, len(self.blocks)))
