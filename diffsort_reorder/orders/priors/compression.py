"""The compression prior (REOrder, arXiv 2505.23751, section 3): which scan order makes a
dataset's patch stream most (or least) compressible.

Patches are quantized with a k-means codebook (``scipy.cluster.vq``), each image becomes a grid of
codes, the codes are read in every scan order as a unigram stream (one symbol per patch) or a
bigram stream (one symbol per pair of consecutive patches of an image), and LZMA compresses them
(raw LZMA2, preset 9 | extreme, with a 64 KiB dictionary: the same output as the 64 MiB default
for streams of this size, without allocating ~670 MiB per call). One image's stream is a few dozen
bytes, too short for any compressor, so the streams of ``images_per_stream`` images are
concatenated (in the same scan order) and compressed together. The score of an order is the mean
size reduction in percent over these blocks (higher = more compressible), with a bootstrap
interval over blocks. REOrder uses the prior only to pick an initial order; its
introduction argues for the least compressible one, so ``select="least"`` is the default.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.cluster.vq import kmeans2, vq

from ...data import patchify
from ..scans import list_orders, scan_order
from .common import cached, check_images

STREAMS = ("unigram", "bigram")
SELECTS = ("least", "most")
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 16}]
DEFAULT_ORDERS = ("row_major", "column_major", "hilbert", "spiral", "diagonal", "snake")


@dataclass
class CompressionPrior:
    scores: dict[str, float]  # scan order -> mean % size reduction (higher = more compressible)
    intervals: dict[str, tuple[float, float]]  # 95% bootstrap interval over blocks of images
    order_name: str
    order: torch.Tensor  # (N,) the selected scan order
    settings: dict = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'order':<14} {'reduction %':>11} {'95% interval':>17}"]
        for name, score in sorted(self.scores.items(), key=lambda kv: -kv[1]):
            lo, hi = self.intervals[name]
            mark = "  <- selected" if name == self.order_name else ""
            lines.append(f"{name:<14} {score:>11.2f} {f'[{lo:.2f}, {hi:.2f}]':>17}{mark}")
        return "\n".join(lines)


def encode_stream(codes: np.ndarray, stream: str, codebook_size: int) -> bytes:
    """One image's codes ``(N,)`` in sequence order -> the byte stream LZMA compresses."""
    if stream == "bigram":
        codes = codes[:-1].astype(np.int64) * codebook_size + codes[1:]
        alphabet = codebook_size**2
    else:
        alphabet = codebook_size
    width = 1 if alphabet <= 256 else 2 if alphabet <= 65536 else 4
    return codes.astype(f"<u{width}").tobytes()


def size_reduction(data: bytes) -> float:
    """Percent by which raw LZMA2 shrinks ``data`` (negative when it grows)."""
    packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    return 100.0 * (1.0 - len(packed) / len(data))


def block_reduction(codes: np.ndarray, order: np.ndarray, stream: str, codebook_size: int):
    """Size reduction of the concatenated streams of a block of images ``codes (m, N)``."""
    return size_reduction(b"".join(encode_stream(c[order], stream, codebook_size) for c in codes))


def bootstrap_interval(values: np.ndarray, seed: int, resamples: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def quantize(images: torch.Tensor, patch_size: int, codebook_size: int, seed: int) -> np.ndarray:
    """k-means codes of every patch: ``(M, N)``."""
    tokens = patchify(images.float(), patch_size)  # (M, N, D)
    flat = tokens.reshape(-1, tokens.shape[-1]).double().numpy()
    sample = flat
    if len(flat) > 50_000:  # the codebook needs a sample, not every patch
        sample = flat[np.random.default_rng(seed).choice(len(flat), 50_000, replace=False)]
    codebook, _ = kmeans2(sample, codebook_size, minit="++", rng=seed)
    codes, _ = vq(flat, codebook)
    return codes.reshape(tokens.shape[:2])


def compression_prior(
    images: torch.Tensor,
    patch_size: int,
    *,
    codebook_size: int = 64,
    stream: str = "unigram",
    select: str = "least",
    orders: tuple[str, ...] | list[str] = DEFAULT_ORDERS,
    images_per_stream: int = 32,
    seed: int = 0,
    cache_dir=None,
) -> CompressionPrior:
    """Score every scan order in ``orders`` by how well LZMA compresses the images' code streams
    and pick the ``least`` or ``most`` compressible one."""
    grid = check_images(images, patch_size)
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 2:
        raise ValueError(f"'codebook_size' should be an int >= 2 but got {codebook_size!r}")
    if images.shape[0] < codebook_size:
        raise ValueError(
            f"'images' holds {images.shape[0]} images, fewer than 'codebook_size' "
            f"{codebook_size}; give at least as many images as codebook entries"
        )
    if stream not in STREAMS:
        raise ValueError(f"'stream' should be one of {STREAMS} but got {stream!r}")
    if select not in SELECTS:
        raise ValueError(f"'select' should be one of {SELECTS} but got {select!r}")
    unknown = sorted(set(orders) - set(list_orders()))
    if unknown or not orders:
        raise ValueError(f"'orders' should name scan orders from {list_orders()} but got {orders}")
    if isinstance(images_per_stream, bool) or not isinstance(images_per_stream, int):
        raise ValueError(
            f"'images_per_stream' should be a positive int but got {images_per_stream!r}"
        )
    if images_per_stream < 1:
        raise ValueError(
            f"'images_per_stream' should be a positive int but got {images_per_stream}"
        )
    settings = dict(patch_size=patch_size, codebook_size=codebook_size, stream=stream,
                    select=select, orders=list(orders), images_per_stream=images_per_stream,
                    seed=seed, lzma="raw lzma2, preset 9e, dict 64 KiB")  # fmt: skip

    def compute() -> CompressionPrior:
        codes = quantize(images, patch_size, codebook_size, seed)  # (M, N)
        blocks = [codes[i : i + images_per_stream] for i in range(0, len(codes), images_per_stream)]
        scores, intervals = {}, {}
        for name in orders:
            order = scan_order(name, *grid).numpy()
            per_block = np.array([block_reduction(b, order, stream, codebook_size) for b in blocks])
            scores[name] = float(per_block.mean())
            intervals[name] = bootstrap_interval(per_block, seed)
        pick = min if select == "least" else max
        name = pick(scores, key=scores.get)
        return CompressionPrior(scores, intervals, name, scan_order(name, *grid), settings)

    return cached("compression", images, settings, cache_dir, compute, CompressionPrior)
