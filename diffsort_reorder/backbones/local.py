"""Sliding-window attention with global prefix tokens (Longformer, Beltagy et al. 2020,
arXiv 2004.05150).

Patch ``i`` attends patch ``j`` iff ``|i - j| <= window`` (positions among the patches); prefix
(CLS) tokens are global: they attend every token and every token attends them. ``window = 7``
(7 tokens each side) matches REOrder's Longformer, whose ``attention_window = 14`` counts both
sides. A window that covers the whole sequence (``window >= N - 1``) is simply full attention.

Two paths give the same outputs and gradients:
- ``local_attention_ref``: ``scaled_dot_product_attention`` with the ``(T, T)`` boolean mask. It
  computes all ``T^2`` scores, and stores them too where SDPA falls back to its math kernel
  (float64, or any dtype its fused kernels refuse). The reference, used on CPU and in tests.
- ``local_attention_banded``: patch queries are cut into blocks of ``block_size``; each block
  attends only the ``block_size + 2 * window`` keys around it plus the prefix keys, so time and
  memory are ``O(T * (block_size + 2 * window))``. Pure torch; the default on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from . import register_backbone
from .base import SequenceBackbone, check_num_blocks

ATTENTIONS = ("auto", "ref", "banded")


def _check_window(window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"'window' should be an int >= 0 but got {window!r}")
    return window


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_prefix_tokens: int) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"'q', 'k', 'v' should all be (B, H, T, dh) but got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    T = q.shape[2]
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int):
        raise ValueError(f"'num_prefix_tokens' should be an int but got {num_prefix_tokens!r}")
    if not 0 <= num_prefix_tokens <= T:
        raise ValueError(f"'num_prefix_tokens' should be in [0, T={T}] but got {num_prefix_tokens}")


def local_attention_mask(
    num_patches: int,
    window: int,
    num_prefix_tokens: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``(T, T)`` mask, ``T = num_prefix_tokens + num_patches``, True = may attend."""
    window = _check_window(window)
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 0:
        raise ValueError(f"'num_patches' should be an int >= 0 but got {num_patches!r}")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int):
        raise ValueError(f"'num_prefix_tokens' should be an int but got {num_prefix_tokens!r}")
    if num_prefix_tokens < 0:
        raise ValueError(f"'num_prefix_tokens' should be >= 0 but got {num_prefix_tokens}")
    P = num_prefix_tokens
    # Prefix tokens sit at positions < 0 among the patches; rows and columns below make them global.
    pos = torch.arange(-P, num_patches, device=device)  # (T,)
    mask = (pos[:, None] - pos[None, :]).abs() <= window  # (T, T)
    mask[:P, :] = True
    mask[:, :P] = True
    return mask


def local_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Masked full attention: ``(B, H, T, dh) x 3 -> (B, H, T, dh)``, time ``O(T^2)``."""
    _check_qkv(q, k, v, num_prefix_tokens)
    mask = local_attention_mask(q.shape[2] - num_prefix_tokens, window, num_prefix_tokens, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def local_attention_weights(
    q: torch.Tensor, k: torch.Tensor, window: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """The attention probabilities of ``local_attention_ref``: ``(B, H, T, T)``, zero outside the
    mask. For inspection (saliency); ``weights @ v`` is the reference output."""
    _check_qkv(q, k, k, num_prefix_tokens)
    mask = local_attention_mask(q.shape[2] - num_prefix_tokens, window, num_prefix_tokens, q.device)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, T, T)
    # Every row keeps at least its own token, so no row is all -inf.
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def _band_mask(
    num_patches: int, window: int, block_size: int, num_blocks: int, num_prefix_tokens: int, device
) -> torch.Tensor:
    """Which keys each blocked query may attend: ``(num_blocks, block_size, P + block_size + 2w)``.

    Key column ``c`` of block ``b`` is patch ``b * block_size + c - window``. Padding queries (past
    the last patch) may attend every key: a row with no key would give NaN, which would leak into
    the gradients even though those rows are dropped."""
    N, w, bs = num_patches, window, block_size
    i = torch.arange(num_blocks * bs, device=device).view(num_blocks, bs, 1)  # query patch
    start = torch.arange(num_blocks, device=device).view(num_blocks, 1, 1) * bs - w
    j = start + torch.arange(bs + 2 * w, device=device).view(1, 1, -1)  # (nb, 1, bs + 2w) key patch
    local = ((i - j).abs() <= w) & (j >= 0) & (j < N) | (i >= N)  # (nb, bs, bs + 2w)
    prefix = torch.ones(num_blocks, bs, num_prefix_tokens, dtype=torch.bool, device=device)
    return torch.cat([prefix, local], dim=-1)  # (nb, bs, P + bs + 2w)


def local_attention_banded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    num_prefix_tokens: int = 1,
    block_size: int | None = None,
) -> torch.Tensor:
    """Blocked sliding-window attention, equal to ``local_attention_ref`` in outputs and gradients:
    ``(B, H, T, dh) x 3 -> (B, H, T, dh)`` with memory ``O(T * (block_size + 2 * window))``.

    Prefix queries use full attention (there are few); patch queries in blocks of ``block_size``
    (default ``max(window, 16)``) attend the keys from ``block_start - window`` to
    ``block_end + window`` plus the prefix keys. A window wider than the sequence is clamped to
    ``N - 1``, which is full attention and keeps the gathered keys no longer than the sequence.
    """
    _check_qkv(q, k, v, num_prefix_tokens)
    window = _check_window(window)
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"'block_size' should be a positive int or None but got {block_size!r}")
    B, H, T, dh = q.shape
    P, N = num_prefix_tokens, T - num_prefix_tokens
    out_prefix = F.scaled_dot_product_attention(q[:, :, :P], k, v)  # (B, H, P, dh)
    if N == 0:
        return out_prefix
    w = min(window, N - 1)
    bs = min(block_size or max(w, 16), N)
    nb = -(-N // bs)  # ceil
    pad = nb * bs - N

    def blocks_of_keys(x: torch.Tensor) -> torch.Tensor:
        """Each block's prefix keys, then its ``bs + 2w`` neighbours: ``(B * H, nb, S, dh)``."""
        local = F.pad(x[:, :, P:], (0, 0, w, w + pad))  # (B, H, nb * bs + 2w, dh)
        local = local.unfold(2, bs + 2 * w, bs).transpose(-1, -2)  # (B, H, nb, bs + 2w, dh)
        prefix = x[:, :, None, :P].expand(B, H, nb, P, dh)  # (B, H, nb, P, dh)
        return torch.cat([prefix, local], dim=3).reshape(B * H, nb, P + bs + 2 * w, dh)

    q_blocks = F.pad(q[:, :, P:], (0, 0, 0, pad)).reshape(B * H, nb, bs, dh)
    # A 4-d mask lets SDPA pick a fused kernel; with a 3-d one it falls back to the math path.
    mask = _band_mask(N, w, bs, nb, P, q.device)[None]  # (1, nb, bs, S), broadcast over B * H
    out = F.scaled_dot_product_attention(
        q_blocks, blocks_of_keys(k), blocks_of_keys(v), attn_mask=mask
    )  # (B * H, nb, bs, dh)
    out_patches = out.reshape(B, H, nb * bs, dh)[:, :, :N]  # (B, H, N, dh)
    return torch.cat([out_prefix, out_patches], dim=2)


_ATTENTION_FNS = {"ref": local_attention_ref, "banded": local_attention_banded}


def resolve_attention(attention: str, device: torch.device) -> str:
    """``"auto"`` is ``"banded"`` on CUDA, where ``T^2`` memory hurts, and ``"ref"`` elsewhere,
    where the single masked kernel is simplest."""
    if attention not in ATTENTIONS:
        raise ValueError(f"'attention' should be one of {ATTENTIONS} but got {attention!r}")
    if attention == "auto":
        return "banded" if torch.device(device).type == "cuda" else "ref"
    return attention


class LocalBlock(nn.Module):
    """Pre-norm transformer block with sliding-window attention and global prefix tokens."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window: int, attention: str = "auto"
    ) -> None:
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"'num_heads' should be a positive int but got {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"'num_heads' should divide dim={dim} but got {num_heads}")
        resolve_attention(attention, "cpu")  # fail at build time, not first forward
        self.num_heads, self.window, self.attention = num_heads, _check_window(window), attention
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, num_prefix_tokens: int = 1, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, D) -> (B, T, D)``; with ``return_attention`` also the ``(B, H, T, T)``
        probabilities, computed by the reference path whatever ``attention`` says."""
        B, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, dh)
        attn = None
        if return_attention:
            attn = local_attention_weights(q, k, self.window, num_prefix_tokens)  # (B, H, T, T)
            out = attn @ v  # (B, H, T, dh)
        else:
            fn = _ATTENTION_FNS[resolve_attention(self.attention, x.device)]
            out = fn(q, k, v, self.window, num_prefix_tokens)  # (B, H, T, dh)
        x = x + self.proj(out.transpose(1, 2).reshape(B, T, D))
        x = x + self.mlp(self.norm2(x))
        return (x, attn) if return_attention else x


@register_backbone("local")
class LocalBackbone(SequenceBackbone):
    """A stack of ``LocalBlock``s (Longformer, arXiv 2004.05150): patches see ``window`` patches on
    each side, the CLS token (``readout="cls"``) sees and is seen by all.

    ``window`` may exceed the sequence: it is clamped per call to ``N - 1`` patches, which is full
    attention, so one config serves every sequence length. ``attention`` picks the path:
    ``"ref"`` (masked ``O(T^2)``), ``"banded"`` (``O(T * window)``) or ``"auto"`` (banded on CUDA).
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        num_tokens: int,
        num_classes: int,
        readout: str = "cls",
        window: int = 7,
        mlp_ratio: float = 4.0,
        attention: str = "auto",
    ) -> None:
        super().__init__(dim, num_classes, num_tokens, readout)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"'depth' should be a positive int but got {depth!r}")
        self.window = _check_window(window)
        self.depth = depth
        self.blocks = nn.ModuleList(
            LocalBlock(dim, num_heads, mlp_ratio, window, attention) for _ in range(depth)
        )
        self.apply(_init_weights)

    def run_blocks(self, h: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        """Hidden states ``(B, P + N, D)`` after ``blocks``; each knows the prefix is global."""
        for block in blocks:
            h = block(h, num_prefix_tokens=self.num_prefix_tokens)
        return h

    def readout_attention(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Attention rollout (Abnar & Zuidema 2020, arXiv 2005.00928) of the CLS token over the
        first ``num_blocks`` blocks: ``(B, N)``, how much the CLS token draws on each patch.
        Each block's head-averaged attention is mixed half-and-half with the identity (the
        residual path) and the blocks are multiplied."""
        if self.readout != "cls":
            raise ValueError(
                f"attention rollout reads the CLS token, but this backbone's readout is "
                f"{self.readout!r}; build it with readout='cls'"
            )
        self.check_input(x)
        check_num_blocks(num_blocks, len(self.blocks))
        h = self.add_prefix(x)
        eye = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
        rollout = eye.expand(h.shape[0], -1, -1)  # (B, T, T)
        for block in self.blocks[:num_blocks]:
            h, attn = block(h, num_prefix_tokens=self.num_prefix_tokens, return_attention=True)
            mixed = 0.5 * attn.mean(1) + 0.5 * eye  # (B, T, T), rows sum to 1
            rollout = mixed @ rollout
        return rollout[:, 0, self.num_prefix_tokens :]  # (B, N)


def _init_weights(module: nn.Module) -> None:
    """ViT's init (timm): truncated normal linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
