"""``txl``: Transformer-XL style segment recurrence (Dai et al. 2019, arXiv 1901.02860).

The sequence is cut into segments of ``segment`` tokens. Each segment attends causally to itself
and to a memory of the last ``mem_len`` hidden states that entered the same layer for earlier
segments (detached: no gradient through the memory), with a learned relative-position bias per
head. The model reads the last token. Information from a token reaches later segments only through
the memory, one segment per layer, so what it can use depends on where the order puts the tokens.

REOrder's released Transformer-XL reset its memory at every forward pass, so the memory was never
used; here it is carried across the segments of each sequence (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from . import register_backbone
from .base import SequenceBackbone


class TXLBlock(nn.Module):
    """Pre-norm block whose attention sees ``[memory; segment]`` causally, plus a relative bias."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, max_distance: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"'dim' {dim} should be divisible by 'num_heads' {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # bias[h, d] for a key d positions before the query (d = 0 is the query itself)
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, max_distance))

    def attention_bias(self, num_queries: int, num_memory: int) -> torch.Tensor:
        """Additive bias ``(H, S, M + S)``: the learned relative bias, -inf on future keys."""
        device = self.rel_bias.device
        query_pos = num_memory + torch.arange(num_queries, device=device)  # (S,)
        key_pos = torch.arange(num_memory + num_queries, device=device)  # (M + S,)
        distance = query_pos[:, None] - key_pos[None, :]  # (S, M + S)
        future = distance < 0
        bias = self.rel_bias[:, distance.clamp(0, self.rel_bias.shape[1] - 1)]  # (H, S, M + S)
        return bias.masked_fill(future, float("-inf"))

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        b, s, d = x.shape
        context = x if memory is None else torch.cat([memory, x], dim=1)  # (B, M + S, D)
        m = context.shape[1] - s
        heads = self.num_heads
        q = self.q(self.norm1(x)).reshape(b, s, heads, d // heads).transpose(1, 2)  # (B,H,S,dh)
        k, v = self.kv(self.norm1(context)).reshape(b, m + s, 2, heads, d // heads).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, M + S, dh)
        bias = self.attention_bias(s, m).to(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, S, dh)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


@register_backbone("txl")
class TXLBackbone(SequenceBackbone):
    """Segment-recurrent transformer. A ``segment`` or ``mem_len`` longer than the sequence is
    clamped to it (one segment: plain causal attention); ``mem_len=0`` disables the memory."""

    def __init__(
        self, *, dim, depth, num_heads, num_tokens, num_classes, readout="last", segment=16,
        mem_len=None, mlp_ratio=4.0,
    ) -> None:  # fmt: skip
        if readout == "cls":
            raise ValueError(
                "'readout' 'cls' does not suit a causal segment model (a CLS token at slot 0 sees "
                "nothing); use 'last' or 'mean'"
            )
        super().__init__(dim, num_classes, num_tokens, readout)
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
            raise ValueError(f"'segment' should be a positive int but got {segment!r}")
        mem_len = segment if mem_len is None else mem_len
        if isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 0:
            raise ValueError(f"'mem_len' should be an int >= 0 but got {mem_len!r}")
        self.segment = min(segment, num_tokens)
        self.mem_len = min(mem_len, num_tokens)
        max_distance = self.mem_len + self.segment
        self.blocks = nn.ModuleList(
            TXLBlock(dim, num_heads, mlp_ratio, max_distance) for _ in range(depth)
        )

    def readout_window(self) -> int:
        """The last segment and the memory it attends directly: the slots whose tokens reach the
        last token in one attention step (earlier ones only through memories of memories)."""
        last = self.num_tokens - self.segment * ((self.num_tokens - 1) // self.segment)
        return min(self.num_tokens, last + self.mem_len)

    def run_blocks(self, h: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        """Hidden states ``(B, N, D)`` after ``blocks``, segment by segment, each layer attending
        to its memory of the earlier segments."""
        memory: list[torch.Tensor | None] = [None] * len(blocks)
        outputs = []
        for segment in h.split(self.segment, dim=1):  # (B, S, D) each; the last may be shorter
            y = segment
            for layer, block in enumerate(blocks):
                entering = y.detach()  # what this layer sees of this segment, kept for the next
                y = block(y, memory[layer])
                if self.mem_len:
                    past = (
                        entering
                        if memory[layer] is None
                        else torch.cat([memory[layer], entering], 1)
                    )
                    memory[layer] = past[:, -self.mem_len :]
            outputs.append(y)
        return torch.cat(outputs, dim=1)
