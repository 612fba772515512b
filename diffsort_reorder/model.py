"""The patch-sequence classifier: patches -> embedding (+ positional embedding) -> backbone.

The ordering sits between ``embed`` and ``classify`` and is not part of the model: the training
loop runs ``model.classify(orderer(model.embed(patches)).tokens)`` whatever the orderer is.

Positional embeddings (``pos_embed``):
- ``patch``: one per grid location, added before the ordering, so each patch keeps its location's
  embedding wherever it is placed (REOrder's learned-order setting);
- ``slot``: one per sequence position, added after the ordering;
- ``none``.
"""

from __future__ import annotations

import torch
from torch import nn

from estimators import Wants

from .backbones import SequenceBackbone
from .checks import check_choice

POS_EMBEDS = ("patch", "slot", "none")
# The probes this model answers (``Wants("probe", probe=name)``): training-free saliencies, each
# name -> the method that computes it.
SALIENCY_PROBES = {"gradient": "gradient_saliency", "attention": "attention_saliency"}


class PatchSequenceModel(nn.Module):
    def __init__(
        self, patch_dim: int, num_tokens: int, backbone: SequenceBackbone, pos_embed: str = "patch"
    ) -> None:
        super().__init__()
        self.pos_embed_mode = check_choice("pos_embed", pos_embed, POS_EMBEDS)
        self.patch_embed = nn.Linear(patch_dim, backbone.dim)
        self.pos_embed = None
        if pos_embed != "none":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, backbone.dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.backbone = backbone

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Row-major patches ``(B, N, C*p*p)`` -> tokens ``(B, N, D)``, before the ordering."""
        x = self.patch_embed(patches)
        return x + self.pos_embed if self.pos_embed_mode == "patch" else x

    def early_features(self, tokens: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """The patch tokens' hidden states ``(B, N, D)`` after the backbone's first ``num_blocks``
        blocks, run on the canonical (row-major) order with the backbone's own weights."""
        if self.pos_embed_mode == "slot":
            tokens = tokens + self.pos_embed
        return self.backbone.features(tokens, num_blocks)[:, self.backbone.num_prefix_tokens :]

    def gradient_saliency(self, tokens: torch.Tensor) -> torch.Tensor:
        """Training-free saliency ``(B, N)``: the norm of the gradient of each image's top logit
        with respect to each token, with the model on the canonical order (Simonyan et al. 2014,
        arXiv 1312.6034). Leaves no gradient in the model's parameters."""
        with torch.enable_grad():
            probe = tokens.detach().requires_grad_()
            top = self.classify(probe).max(-1).values.sum()
            (grad,) = torch.autograd.grad(top, probe)
        return grad.norm(dim=-1)  # (B, N)

    def attention_saliency(self, tokens: torch.Tensor, num_blocks: int = 1) -> torch.Tensor:
        """Training-free saliency ``(B, N)``: the CLS token's attention rollout over the first
        ``num_blocks`` blocks, on the canonical order, for backbones that expose their attention
        (``readout_attention``: the ``local`` backbone)."""
        if not hasattr(self.backbone, "readout_attention"):
            raise ValueError(
                f"backbone {type(self.backbone).__name__} exposes no attention probabilities; "
                f"attention saliency needs backbone=local (or use saliency_gradient)"
            )
        if self.pos_embed_mode == "slot":
            tokens = tokens + self.pos_embed
        with torch.no_grad():
            return self.backbone.readout_attention(tokens, num_blocks)

    def answer(self, wants: Wants, tokens: torch.Tensor) -> torch.Tensor | None:
        """What an orderer's ``wants`` asks for, computed on the canonical order of ``tokens``
        ``(B, N, D)``: None, early features ``(B, N, D)`` or, for a probe, a saliency ``(B, N, 1)``
        (the probes are this model's: :data:`SALIENCY_PROBES`)."""
        if wants.kind == "blocks":
            return self.early_features(tokens, wants.blocks)
        if wants.kind == "probe":
            method = SALIENCY_PROBES[check_choice("probe", wants.probe, SALIENCY_PROBES)]
            return getattr(self, method)(tokens)[..., None]  # (B, N, 1)
        return None

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ordered tokens ``(B, N, D)`` -> logits ``(B, C)``."""
        if self.pos_embed_mode == "slot":
            tokens = tokens + self.pos_embed
        return self.backbone(tokens)
