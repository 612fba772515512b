"""Composing run configs from ``configs/`` with Hydra's compose API.

``method=<estimator>`` also selects the config group ``estimator=<estimator>`` (its learning rate,
temperature schedule, starting order and hyper-parameters) unless ``estimator=`` is given; a prior
named by ``method=`` or ``estimator.init=`` selects its group (``prior=compression`` or
``prior=collapse``, with its settings) likewise.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from estimators import list_estimators

PRIOR_GROUPS = {"compression_prior": "compression", "collapse_prior": "collapse"}  # configs/prior
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def value_of(overrides: list[str], key: str) -> str | None:
    """The value the last ``key=value`` override gives (``+key=`` and ``++key=`` too)."""
    value = None
    for item in overrides:
        name, sep, rest = item.partition("=")
        if sep and name.lstrip("+") == key:
            value = rest
    return value


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The composed config for ``overrides`` (Hydra's override syntax)."""
    overrides = list(overrides or [])
    method = value_of(overrides, "method")
    if method in list_estimators() and value_of(overrides, "estimator") is None:
        overrides.append(f"estimator={method}")
    prior = method if method in PRIOR_GROUPS else value_of(overrides, "estimator.init")
    if prior in PRIOR_GROUPS and value_of(overrides, "prior") is None:
        overrides.append(f"prior={PRIOR_GROUPS[prior]}")
    # Inside a @hydra.main app (the study) Hydra is initialized already: compose beside it.
    outer = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
