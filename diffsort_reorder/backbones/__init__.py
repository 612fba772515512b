"""Sequence backbones by name: ``create_backbone(name, num_tokens=N, num_classes=C, size="tiny",
**options)``. Every one maps ``(B, N, D)`` tokens in sequence order to ``(B, C)`` logits."""

from __future__ import annotations

import importlib

from .base import READOUTS, SIZES, SequenceBackbone

BACKBONES: dict[str, type[SequenceBackbone]] = {}
_MODULES = ("vit", "local", "txl", "mamba")  # each registers its backbone when imported


def register_backbone(name: str):
    def decorator(cls):
        BACKBONES[name] = cls
        cls.name = name
        return cls

    return decorator


def _register_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def list_backbones() -> list[str]:
    _register_all()
    return sorted(BACKBONES)


def create_backbone(name: str, *, size: str = "tiny", **options) -> SequenceBackbone:
    """Build backbone ``name``; ``size`` sets dim/depth/num_heads unless ``options`` give them.
    ``None`` options mean the default."""
    _register_all()
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; available backbones: {', '.join(list_backbones())}"
        )
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; available sizes: {', '.join(SIZES)}")
    kwargs = {**SIZES[size], **{k: v for k, v in options.items() if v is not None}}
    return BACKBONES[name](**kwargs)


__all__ = [
    "BACKBONES",
    "READOUTS",
    "SIZES",
    "SequenceBackbone",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
