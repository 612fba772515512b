"""Images <-> row-major patch tokens."""

from __future__ import annotations

import torch


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """The patch grid ``(H / p, W / p)``; raises if ``patch_size`` does not divide the image."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"'patch_size' should be a positive int but got {patch_size!r}")
    if patch_size <= 0:
        raise ValueError(f"'patch_size' should be a positive int but got {patch_size}")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"'patch_size' {patch_size} does not divide the image size {height}x{width}; "
            f"use a patch size that divides both sides"
        )
    return height // patch_size, width // patch_size


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` images -> ``(B, N, C*p*p)`` tokens, patches in row-major grid order.

    Each token flattens its patch as ``(C, p, p)``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"'images' should be a torch.Tensor but got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"'images' should be a 4d-tensor (B, C, H, W) but got {tuple(images.shape)}"
        )
    b, c, h, w = images.shape
    gh, gw = grid_shape(h, w, patch_size)
    p = patch_size
    x = images.reshape(b, c, gh, p, gw, p)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(b, gh * gw, c * p * p)  # (B, N, C*p*p)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, C*p*p)`` row-major tokens -> ``(B, C, H, W)``."""
    if tokens.dim() != 3:
        raise ValueError(
            f"'tokens' should be a 3d-tensor (B, N, C*p*p) but got {tuple(tokens.shape)}"
        )
    gh, gw = grid_shape(height, width, patch_size)
    b, n, d = tokens.shape
    p = patch_size
    if n != gh * gw or d % (p * p):
        raise ValueError(
            f"'tokens' of shape {tuple(tokens.shape)} do not tile a {height}x{width} image "
            f"with patch size {p}"
        )
    c = d // (p * p)
    x = tokens.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(b, c, height, width)
