"""What reads a run without training it: a split's metrics (:func:`evaluate`) and the order a
per-image orderer gives one image (:func:`example_order`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import patchify
from ..data.loading import shard_bounds
from .build import Run, order_tokens


def readout_window(run: Run) -> int | None:
    """The last slots ``run``'s backbone reads best (see ``SequenceBackbone.readout_window``)."""
    backbone = run.model.backbone
    return getattr(backbone, "_orig_mod", backbone).readout_window()  # under torch.compile too


@torch.no_grad()
def evaluate(run: Run, split: str = "val") -> dict:
    """Loss and accuracy on ``split`` ("val" or "test") with the hard order, as
    ``<split>_loss``/``<split>_acc``, and (on val) the means of what the dataset scores an order
    by (its ``order_metrics``: on planted data ``key_recall``, the mean fraction of keys the order
    puts in the window the backbone reads best)."""
    run.model.eval()
    run.orderer.eval()
    dataset = run.val_set if split == "val" else run.test_set
    window = readout_window(run)
    sums = {"loss": 0.0, "correct": 0, "seen": 0}
    # Each rank evaluates its contiguous part of the set, from image `first` on; sums add up.
    first, _ = shard_bounds(len(dataset), run.world.rank, run.world.size)
    # The dataset's metric names, known before any batch: a rank given no image sums them too.
    no_order = torch.zeros(0, run.grid[0] * run.grid[1], dtype=torch.long)
    scored = split == "val"
    if scored:
        sums.update(dict.fromkeys(dataset.order_metrics(no_order, first, window), 0.0))
    for images, labels in run.loader(split).epoch(None):
        images, labels = images.to(run.device), labels.to(run.device)
        with run.autocast():
            out, _ = order_tokens(run, patchify(images, run.cfg.data.patch_size))
            logits = run.model.classify(out.tokens)
        sums["loss"] += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        sums["correct"] += int((logits.argmax(-1) == labels).sum())
        if scored:
            start = first + sums["seen"]
            for name, per_image in dataset.order_metrics(out.index, start, window).items():
                sums[name] += float(per_image.sum())
        sums["seen"] += len(labels)
    totals = dict(zip(sums, run.world.total(list(sums.values())), strict=True))
    seen = totals.pop("seen")
    metrics = {f"{split}_loss": totals.pop("loss") / seen,
               f"{split}_acc": totals.pop("correct") / seen}  # fmt: skip
    return {**metrics, **{name: total / seen for name, total in totals.items()}}


@torch.no_grad()
def example_order(run: Run) -> list[int]:
    """The hard order ``(N,)`` the orderer gives the first validation image."""
    run.model.eval()
    run.orderer.eval()
    image = run.val_set[0][0][None].to(run.device)  # (1, C, H, W)
    with run.autocast():
        out, _ = order_tokens(run, patchify(image, run.cfg.data.patch_size))
    return out.index[0].cpu().tolist()
