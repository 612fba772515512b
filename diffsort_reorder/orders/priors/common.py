"""What both priors share: checking their input images and caching results by fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from ...data import grid_shape
from ...files import CorruptFileError, UnsafeFileError, load, save_atomic

log = logging.getLogger(__name__)


def check_images(images: object, patch_size: int) -> tuple[int, int]:
    """Validate ``images (M, C, H, W)`` floats in [0, 1]; returns the patch grid."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"'images' should be a torch.Tensor but got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"'images' should be a float tensor but got dtype {images.dtype}")
    if images.dim() != 4:
        raise ValueError(
            f"'images' should be a 4d-tensor (M, C, H, W) but got {tuple(images.shape)}"
        )
    if images.shape[0] < 1:
        raise ValueError("'images' should hold at least one image but got M=0")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"'images' values should lie in [0, 1] but range over [{lo:.3g}, {hi:.3g}]"
        )
    return grid_shape(images.shape[2], images.shape[3], patch_size)


def default_cache_dir() -> Path:
    return Path(
        os.environ.get("DIFFSORT_REORDER_CACHE", Path.home() / ".cache" / "diffsort-reorder")
    )


def fingerprint(kind: str, images: torch.Tensor, settings: dict) -> str:
    """A hash of the images' values and the settings: equal inputs, equal key."""
    digest = hashlib.sha256(kind.encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cached(kind: str, images: torch.Tensor, settings: dict, cache_dir, compute, result_type=None):
    """``compute()`` unless a result for the same fingerprint is on disk under ``cache_dir``
    (``None``: the default folder, ``False``: no caching). ``result_type`` is the class of what
    ``compute`` returns: the one class a cache file may hold besides tensors and plain values
    (the file is read without running code)."""
    if cache_dir is False:
        return compute()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "priors" / f"{kind}-{fingerprint(kind, images, settings)}.pt"
    if path.exists():
        try:
            return load(path, [result_type] if result_type else [])["result"]
        except (CorruptFileError, UnsafeFileError, KeyError, TypeError) as err:
            # torn, or written by another version (its classes moved): computed again
            log.warning("prior cache %s is unreadable (%s); computing it again", path, err)
    result = compute()
    save_atomic({"kind": kind, "settings": settings, "result": result}, path)
    return result
