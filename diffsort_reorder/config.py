"""Composing run configs with Hydra's compose API.

The configs live in the repository's ``configs/`` folder, which installs as the package
``diffsort_reorder.configs`` (see pyproject.toml); Hydra finds them on its ``pkg://`` search path,
so a run composes the same config from a checkout or from an installed wheel.

``method=<estimator>`` also selects the config group ``estimator=<estimator>`` (its learning rate,
temperature schedule, starting order and hyper-parameters) unless ``estimator=`` is given; a prior
named by ``method=`` or ``estimator.init=`` selects its group (``prior=compression_prior`` or
``prior=collapse_prior``, with its settings) likewise: a group's files are named as the methods.
The other way round, ``estimator=<estimator>`` or ``prior=<prior>`` without ``method=`` selects
that method (a run whose method does not use them is refused by ``run.checks``).

The study command composes ``configs/study.yaml``, whose keys are ``study`` and ``space``: any
other override (``data=``, ``+data=``, ...) would be ignored or misread there, so it is refused,
as is a study file given by path rather than by name.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from estimators import list_estimators

CONFIG_MODULE = "diffsort_reorder.configs"
# Earlier names of the prior config files, still taken by prior=<name>.
RENAMED_PRIORS = {"compression": "compression_prior", "collapse": "collapse_prior"}
# Trainer keys that may differ when a run resumes: how it is driven, not what it computes.
RUNTIME_KEYS = (
    "resume", "stop_after_epochs", "progress", "log_dir", "num_workers", "threads"
)  # fmt: skip
STUDY_KEYS = ("study", "space")  # what the study command's overrides may set


def comparable(data: dict) -> dict:
    """A config (as a dict) without what may differ between runs of the same config: its
    ``output_dir`` and the trainer's runtime keys. The one definition of "the same config", for
    run folders (:func:`config_digest`) and resuming (:func:`same_config`)."""
    data = {k: v for k, v in data.items() if k != "output_dir"}
    if isinstance(data.get("trainer"), dict):
        data["trainer"] = {k: v for k, v in data["trainer"].items() if k not in RUNTIME_KEYS}
    return data


def same_config(a: dict, b: dict) -> bool:
    """Whether the resolved configs ``a`` and ``b`` describe the same run."""
    return comparable(a) == comparable(b)


def config_digest(*, _root_: DictConfig) -> str:
    """``${config_digest:}``: 8 hex digits of the resolved config (:func:`comparable`), so that
    the default run directory of one config is always the same (a repeated command resumes) and
    differs between configs."""
    data = comparable(OmegaConf.to_container(_root_, resolve=False))
    resolved = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


OmegaConf.register_new_resolver("config_digest", config_digest, replace=True)


def group_names(group: str) -> list[str]:
    """The config files of ``group`` (``configs/<group>/*.yaml``), as ``group=`` takes them."""
    folder = importlib.resources.files(CONFIG_MODULE).joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


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
    overrides = [_renamed_prior(o) for o in overrides or []]
    if config_name == "study":
        for override in overrides:
            check_study_override(override)
    if config_name == "config" and value_of(overrides, "method") is None:
        overrides += _method_of_groups(overrides)
    method = value_of(overrides, "method")
    if method in list_estimators() and value_of(overrides, "estimator") is None:
        overrides.append(f"estimator={method}")
    priors = group_names("prior")
    prior = method if method in priors else value_of(overrides, "estimator.init")
    if prior in priors and value_of(overrides, "prior") is None:
        overrides.append(f"prior={prior}")
    # Hydra may be initialized already (a caller's own app): compose beside it.
    outer = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)
    return cfg


def _method_of_groups(overrides: list[str]) -> list[str]:
    """``method=<name>`` for ``estimator=<name>`` (or else ``prior=<name>`` without
    ``estimator.init=``), the method they configure; none when neither names one."""
    estimator, prior = value_of(overrides, "estimator"), value_of(overrides, "prior")
    if estimator in list_estimators():
        return [f"method={estimator}"]
    if prior in group_names("prior") and value_of(overrides, "estimator.init") is None:
        return [f"method={prior}"]
    return []


def check_study_override(override: str) -> None:
    """An override the study command reads: ``study=<name>``, ``study.<key>=...`` or
    ``space.<method>.<key>=...``; a ValueError in one line otherwise."""
    key, sep, value = override.partition("=")
    name = key.lstrip("+~")
    top = name.split(".")[0]
    if top not in STUDY_KEYS:
        raise ValueError(
            f"{override!r} sets {top!r}, which a study does not read: the study command takes "
            f"study=<name>, study.<key>=... and space.<method>.<key>=...; its runs' settings go in "
            f"study.overrides (e.g. 'study.overrides=[{name}={value or '...'},...]' replaces the "
            f"list) or a study file"
        )
    if name == "study" and sep and ("/" in value or value.endswith((".yaml", ".yml"))):
        names = group_names("study")
        stem = value.rstrip("/").rpartition("/")[2].rsplit(".", 1)[0]
        hint = f"study={stem}" if stem in names else f"one of {', '.join(names)}"
        raise ValueError(
            f"study={value}: give a study by name, not by path: {hint} (study files are "
            f"configs/study/<name>.yaml; put another one there to run it)"
        )


def _renamed_prior(override: str) -> str:
    """``prior=compression`` (the name before the files took their methods' names) as
    ``prior=compression_prior``."""
    key, sep, value = override.partition("=")
    if sep and key.lstrip("+") == "prior" and value in RENAMED_PRIORS:
        return f"{key}={RENAMED_PRIORS[value]}"
    return override


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, as runs record it."""
    return OmegaConf.to_yaml(cfg, resolve=True)
