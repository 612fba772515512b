"""Search spaces: each learned method's space from ``configs/space/``, checked before any training,
the points Optuna suggests from it, and the sampler and pruner that search it.

A key is a dotted path into the run config; a spec is ``{type: float|int, low, high, log, step}``
or ``{type: categorical, choices}``. A starting order (``*.init``) is a scan order or a prior.
"""

from __future__ import annotations

import inspect
import logging
import math

import optuna
from omegaconf import DictConfig, OmegaConf

from ..orders.methods import check_start_orders

SPACE_TYPES = ("float", "int", "categorical")
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
log = logging.getLogger(__name__)


def check_space(method: str, space) -> dict[str, dict]:
    """The search space of ``method`` as ``{config key: spec}``, each spec checked."""
    if space is None or not len(space):
        raise ValueError(
            f"learned method {method!r} has no search space; add 'space.{method}' "
            f"(configs/space/) or remove it from 'study.methods'"
        )
    checked = {}
    for key, spec in space.items():
        where = f"'space.{method}.{key}'"
        spec = OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else spec
        if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
            raise ValueError(f"{where} should be a mapping with type one of {SPACE_TYPES}: {spec}")
        if spec["type"] == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"{where} has no choices (an empty search space): {spec}")
            if key.endswith(".init"):
                check_start_orders(where, choices)
        else:
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) for v in (low, high)) or not low < high:
                raise ValueError(f"{where} needs low < high (an empty range otherwise): {spec}")
            if spec.get("log") and low <= 0:
                raise ValueError(f"{where} is log-scaled, so low should be > 0: {spec}")
        checked[key] = spec
    return checked


def first_point(space: dict[str, dict]) -> dict:
    """A point of the space (each range's low end, each first choice), for checking configs."""
    return {
        k: s["choices"][0] if s["type"] == "categorical" else s["low"] for k, s in space.items()
    }


def in_space(value, spec: dict) -> bool:
    if spec["type"] == "categorical":
        return value in spec["choices"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return spec["low"] <= value <= spec["high"] and (spec["type"] == "float" or value == int(value))


def suggest(trial: optuna.Trial, key: str, spec: dict):
    if spec["type"] == "categorical":
        return trial.suggest_categorical(key, spec["choices"])
    if spec["type"] == "int":
        return trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1),
                                 log=spec.get("log", False))  # fmt: skip
    return trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))


def override_value(value) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # nan, inf: Hydra's spelling
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _build(kind: str, table: dict, cfg, **extra):
    if cfg.name not in table:
        raise ValueError(f"'study.{kind}.name' should be one of {list(table)} but got {cfg.name!r}")
    options = OmegaConf.to_container(cfg.get("options") or {})
    # Options the chosen class does not take are left out (so `study.pruner.name=none` or
    # `study.sampler.name=random` switch with one override), and said so.
    accepted = inspect.signature(table[cfg.name]).parameters
    unused = sorted(set(options) - set(accepted))
    if unused:
        log.info("study.%s %r does not take %s; ignored", kind, cfg.name, unused)
    options = {k: v for k, v in options.items() if k in accepted}
    try:
        return table[cfg.name](**extra, **options)
    except TypeError as err:
        raise ValueError(
            f"'study.{kind}.options' {options} do not fit {cfg.name!r}: {err}"
        ) from err


def build_sampler(cfg, seed: int) -> optuna.samplers.BaseSampler:
    """``study.sampler`` (name and options), seeded."""
    return _build("sampler", SAMPLERS, cfg, seed=seed)


def build_pruner(cfg) -> optuna.pruners.BasePruner:
    """``study.pruner`` (name and options)."""
    return _build("pruner", PRUNERS, cfg)
