"""The collapse prior (The Collapse of Patches, arXiv 2511.22281): order patches by how much the
others depend on them.

A small soft patch-selection autoencoder learns, for every target patch ``n`` of an image,
selection weights ``w_n in [0, 1]^N`` over the other patches. Each other patch is blended with
noise by how much it is selected, ``e_i' = a_i e_i + (1 - a_i) noise`` with
``a_i = exp(-(1 - w_i)^2 / (2 sigma^2))``, and a decoder reconstructs patch ``n`` from the blend
(L1). A contrastive term (weight 0.01, as the paper) pushes different targets towards different
selections; a sparsity term (our addition: without a price on selecting, every weight drifts to 1
and the selections say nothing) keeps the selections to the patches that help. It ramps in over
the first half of training, so that the decoder learns to read before selections are pruned.

The dependency matrix ``A[i, j]`` (how much patch ``j`` serves to reconstruct patch ``i``) is the
mean selection over images. PageRank on it - a walker at ``i`` steps to ``j`` with probability
``A[i, j] / sum_j A[i, j]``, so rank flows to the patches that others depend on - gives the
dataset-level order (descending rank); the same on each image's own selections gives per-image
orders. The paper gives no damping; 0.85 is PageRank's usual value and is exposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...data import patchify
from .common import cached, check_images


@dataclass
class CollapsePrior:
    order: torch.Tensor  # (N,) descending dataset-level PageRank
    pagerank: torch.Tensor  # (N,)
    dependency: torch.Tensor  # (N, N): A[i, j] = how much patch j serves to reconstruct patch i
    image_orders: torch.Tensor  # (M, N) per-image orders
    losses: list[float] = field(default_factory=list)  # training loss, every 10 steps
    settings: dict = field(default_factory=dict)

    def table(self, grid: tuple[int, int], top: int = 10) -> str:
        lines = [f"{'rank':>4} {'patch':>5} {'(row, col)':>10} {'pagerank':>9}"]
        for k, patch in enumerate(self.order[:top].tolist()):
            r, c = divmod(patch, grid[1])
            lines.append(
                f"{k:>4} {patch:>5} {f'({r}, {c})':>10} {float(self.pagerank[patch]):>9.4f}"
            )
        return "\n".join(lines)


def pagerank(A: torch.Tensor, damping: float = 0.85, n_iters: int = 200, tol: float = 1e-10):
    """PageRank of the graph whose walker steps from ``i`` to ``j`` with probability proportional
    to ``A[i, j]``: ``(..., N, N) -> (..., N)``, summing to 1. A row without weight jumps
    uniformly."""
    n = A.shape[-1]
    A = A.clamp_min(0).double()
    out = A.sum(-1, keepdim=True)  # (..., N, 1)
    T = torch.where(out > 0, A / out.clamp_min(1e-300), torch.full_like(A, 1.0 / n))
    r = torch.full(A.shape[:-1], 1.0 / n, dtype=torch.float64)  # (..., N)
    for _ in range(n_iters):
        new = (1 - damping) / n + damping * (r.unsqueeze(-2) @ T).squeeze(-2)
        if (new - r).abs().max() < tol:
            return new.float()
        r = new
    return r.float()


class PatchSelector(nn.Module):
    """Selection weights of every target over the other patches, and the reconstruction.

    The decoder reads the other patches with a softmax of the selection scores (never the
    target), so selecting a useful patch is rewarded directly as well as through the cleaner
    blend. The soft mask corrupts a patch's content, never its identity: values are the
    noise-blended, layer-normalized content (on the scale of the noise) plus the position.
    """

    def __init__(self, patch_dim: int, num_tokens: int, dim: int, sigma: float) -> None:
        super().__init__()
        self.dim, self.sigma = dim, sigma
        self.embed = nn.Sequential(nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.pos = nn.Parameter(0.02 * torch.randn(num_tokens, dim))
        self.select_query = nn.Linear(dim, dim)  # from the target's position only: its content is
        self.select_key = nn.Linear(dim, dim)  # what is to be reconstructed
        self.select_bias = nn.Parameter(torch.tensor(2.0))  # start open (w ~ 0.88): see, then prune
        self.read_value = nn.Linear(dim, dim)
        self.decoder = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, patch_dim)
        )
        self.register_buffer("eye", torch.eye(num_tokens, dtype=torch.bool))

    def selection_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, N, N)``: target ``n``'s score for patch ``i``; -inf on ``i = n``."""
        keys = self.select_key(self.embed(patches) + self.pos)  # (B, N, d)
        queries = self.select_query(self.pos)  # (N, d)
        logits = torch.einsum("nd,bid->bni", queries, keys) / math.sqrt(self.dim)
        return (logits + self.select_bias).masked_fill(self.eye, float("-inf"))

    def selection(self, patches: torch.Tensor) -> torch.Tensor:
        """``w[b, n, i]`` ``(B, N, N)``: how much target ``n`` selects patch ``i``; 0 if i = n."""
        return torch.sigmoid(self.selection_logits(patches))

    def forward(self, patches: torch.Tensor, noise: torch.Tensor):
        logits = self.selection_logits(patches)  # (B, N, N)
        w = torch.sigmoid(logits)
        a = torch.exp(-((1 - w) ** 2) / (2 * self.sigma**2)).unsqueeze(-1)  # (B, N, N, 1)
        content = self.embed(patches).unsqueeze(1)  # (B, 1, N, d)
        values = self.read_value(a * content + (1 - a) * noise + self.pos)  # (B, N, N, d)
        read = logits.softmax(-1)  # (B, N, N): the same scores, sharpened to where to read
        pooled = torch.einsum("bni,bnid->bnd", read, values)  # (B, N, d)
        return self.decoder(pooled + self.pos), w  # (B, N, P), (B, N, N)


def contrastive_term(w: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between the selections of different targets (to be minimized)."""
    unit = F.normalize(w, dim=-1)  # (B, N, N)
    sim = unit @ unit.transpose(-1, -2)  # (B, N, N)
    n = w.shape[-1]
    return (sim.sum((-1, -2)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)).mean() / (n * (n - 1))


def train_selector(patches, dim, sigma, steps, batch_size, lr, sparsity, contrastive, seed):
    gen = torch.Generator().manual_seed(seed)
    # Seed the initialization without touching the caller's RNG: a cached prior and a computed
    # one must leave a training run in the same state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PatchSelector(patches.shape[-1], patches.shape[1], dim, sigma)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(patches), (min(batch_size, len(patches)),), generator=gen)
        x = patches[idx]  # (B, N, P)
        noise = torch.randn(*x.shape[:2], x.shape[1], dim, generator=gen)  # (B, N, N, d)
        recon, w = model(x, noise)
        price = sparsity * min(1.0, 2 * step / steps)  # ramps in: learn to read, then prune
        loss = (recon - x).abs().mean() + price * w.mean() + contrastive * contrastive_term(w)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            losses.append(float(loss.detach()))
    return model.eval(), losses


def collapse_prior(
    images: torch.Tensor,
    patch_size: int,
    *,
    damping: float = 0.85,
    seed: int = 0,
    dim: int = 32,
    sigma: float = 0.5,
    steps: int = 800,
    batch_size: int = 32,
    lr: float = 1e-2,
    sparsity: float = 0.1,
    contrastive: float = 0.01,
    cache_dir=None,
) -> CollapsePrior:
    """Train the patch-selection model on ``images (M, C, H, W)`` and rank the patches."""
    grid = check_images(images, patch_size)
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 < damping < 1:
        raise ValueError(f"'damping' should lie in (0, 1) but got {damping!r}")
    if grid[0] * grid[1] < 2:
        raise ValueError(f"the collapse prior needs at least 2 patches but the grid is {grid}")
    settings = dict(patch_size=patch_size, damping=damping, seed=seed, dim=dim, sigma=sigma,
                    steps=steps, batch_size=batch_size, lr=lr, sparsity=sparsity,
                    contrastive=contrastive)  # fmt: skip

    def compute() -> CollapsePrior:
        patches = patchify(images.float(), patch_size)  # (M, N, P)
        model, losses = train_selector(patches, dim, sigma, steps, batch_size, lr, sparsity,
                                       contrastive, seed)  # fmt: skip
        with torch.no_grad():
            w = torch.cat([model.selection(chunk) for chunk in patches.split(64)])  # (M, N, N)
        dependency = w.mean(0)  # (N, N)
        rank = pagerank(dependency, damping)
        image_orders = pagerank(w, damping).argsort(dim=-1, descending=True, stable=True)
        order = rank.argsort(descending=True, stable=True)
        return CollapsePrior(order, rank, dependency, image_orders, losses, settings)

    return cached("collapse", images, settings, cache_dir, compute, CollapsePrior)
