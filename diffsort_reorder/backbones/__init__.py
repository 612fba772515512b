"""Sequence backbones by name: ``create_backbone(name, num_tokens=N, num_classes=C, size="tiny",
**options)``. Every one maps ``(B, N, D)`` tokens in sequence order to ``(B, C)`` logits."""

from __future__ import annotations

import importlib
import pkgutil

from estimators.registry import Registry

from .base import READOUTS, SIZES, SequenceBackbone

BACKBONES = Registry("backbone", set_name=True)  # name -> SequenceBackbone subclass


def register_backbone(name: str):
    """Class decorator: register a :class:`SequenceBackbone` as ``name``."""
    return BACKBONES.register(name)


def _register_all() -> None:
    """Import every module of this package: each registers its backbone (a new backbone is its
    module and its config file, nothing else)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def list_backbones() -> list[str]:
    _register_all()
    return BACKBONES.names()


def create_backbone(name: str, *, size: str = "tiny", **options) -> SequenceBackbone:
    """Build backbone ``name``; ``size`` sets dim/depth/num_heads unless ``options`` give them.
    ``None`` options mean the default."""
    _register_all()
    cls = BACKBONES.lookup(name)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; available sizes: {', '.join(SIZES)}")
    kwargs = {**SIZES[size], **{k: v for k, v in options.items() if v is not None}}
    return cls(**kwargs)


__all__ = [
    "BACKBONES",
    "READOUTS",
    "SIZES",
    "SequenceBackbone",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
