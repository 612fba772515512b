"""Checking a study's own settings (``configs/study/``) before anything runs; each bad value is
refused with the key, what it got and what is accepted. The run configs a study composes are
checked by :mod:`diffsort_reorder.run.checks`."""

from __future__ import annotations

from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..backbones import list_backbones
from ..checks import check_name, check_writable
from ..config import RUNTIME_KEYS, compose_config, value_of
from ..orders.methods import check_not_oracle, check_start_orders, list_methods
from ..run.checks import check_config
from ..run.distributed import World
from ..run.log import flatten_config
from .space import build_pruner, build_sampler, first_point
from .workers import jobs_of

METRICS = ("val_acc", "best_val_acc")
# curriculum: REOrder's (fixed order, policy, frozen order) in every seed run; retrain: the order
# the best search trial learned, frozen, and a fresh model trained on it in every seed run.
PROTOCOLS = ("curriculum", "retrain")


def check_study(s: DictConfig) -> tuple[list[str], list[str], list[str]]:
    """Check ``study.*``; returns its methods, protocols and backbones."""
    check_name("study.name", s.name)  # its folders, TensorBoard runs and locks are named so
    if World.from_env().size > 1:
        raise ValueError(
            f"a study runs in one process per worker, but torchrun's WORLD_SIZE is "
            f"{World.from_env().size}: start study workers without torchrun (each trial's run "
            f"would wait for the others' ranks); torchrun is for one run (diffsort-train)"
        )
    methods = check_methods(s.methods)
    protocols = check_protocols(s.protocol)
    backbones = check_backbones(s.get("backbones"), s.overrides)
    for key in ("n_trials", "seeds", "heartbeat_interval", "grace_period"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"'study.{key}' should be an integer >= 1 but got {s[key]!r}")
    if s.grace_period <= s.heartbeat_interval:
        raise ValueError(f"'study.grace_period' ({s.grace_period} s) should be longer than "
                         f"'study.heartbeat_interval' ({s.heartbeat_interval} s)")  # fmt: skip
    check_references(s)
    check_running(s)
    if s.metric not in METRICS:
        raise ValueError(f"'study.metric' should be one of {METRICS} but got {s.metric!r}")
    build_sampler(s.sampler, s.seed), build_pruner(s.pruner)  # both check their settings
    unknown = sorted(set(s.get("method_overrides") or {}) - set(list_methods()))
    if unknown:
        raise ValueError(f"'study.method_overrides' names unknown methods {unknown}")
    unknown = sorted(set(s.get("backbone_overrides") or {}) - set(list_backbones()))
    if unknown:
        raise ValueError(f"'study.backbone_overrides' names unknown backbones {unknown}")
    return methods, protocols, backbones


def check_running(s: DictConfig) -> None:
    """How a study runs: ``study.progress`` (auto, true or false), ``study.stop_after_runs``
    (null or an integer >= 1), ``study.jobs`` (auto or an integer >= 1), ``study.report`` (a
    bool) and ``study.output_dir`` (a folder it can write into)."""
    if s.progress != "auto" and not isinstance(s.progress, bool):
        raise ValueError(f"'study.progress' should be auto, true or false but got {s.progress!r}")
    jobs_of(s.get("jobs", 1))
    if not isinstance(s.get("report", True), bool):
        raise ValueError(f"'study.report' should be true or false but got {s.report!r}")
    stop = s.get("stop_after_runs")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < 1):
        raise ValueError(
            f"'study.stop_after_runs' should be null or an integer >= 1 but got {stop!r}"
        )
    check_writable("study.output_dir", s.output_dir)


def check_references(s: DictConfig) -> None:
    """``study.oracle`` (a bool) and ``study.task_seeds`` (null or distinct ints)."""
    if not isinstance(s.get("oracle", False), bool):
        raise ValueError(f"'study.oracle' should be true or false but got {s.oracle!r}")
    tasks = s.get("task_seeds")
    if tasks is None:
        return
    values = list(tasks) if isinstance(tasks, (list, ListConfig)) else None
    if (not values or any(isinstance(t, bool) or not isinstance(t, int) for t in values)
            or len(set(values)) < len(values)):  # fmt: skip
        raise ValueError(
            f"'study.task_seeds' should be null or a list of distinct ints (planted key "
            f"placements) but got {tasks!r}"
        )


def check_methods(methods) -> list[str]:
    methods = list(methods or [])
    if not methods:
        raise ValueError("'study.methods' is empty; name at least one method")
    check_not_oracle("'study.methods'", methods)
    known = [m for m in list_methods() if m != "oracle"]
    for method in methods:
        if method not in known:
            raise ValueError(
                f"'study.methods' contains unknown method {method!r}; available: {', '.join(known)}"
            )
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ValueError(f"'study.methods' names {duplicates} more than once")
    return methods


def check_protocols(protocol) -> list[str]:
    """``study.protocol``: one of :data:`PROTOCOLS`, or a list of them (run both on one search)."""
    protocols = [protocol] if isinstance(protocol, str) else list(protocol or [])
    bad = [p for p in protocols if p not in PROTOCOLS]
    if not protocols or bad or len(set(protocols)) < len(protocols):
        given = protocols if isinstance(protocol, ListConfig) else protocol
        raise ValueError(
            f"'study.protocol' should be one of {PROTOCOLS} (or a list of them, each once) but "
            f"got {given!r}"
        )
    return protocols


def check_backbones(backbones, overrides) -> list[str]:
    """``study.backbones``: a list of distinct registered backbones; null for the one the
    study's overrides select (else the run config's default)."""
    if backbones is None:
        return [value_of(list(overrides), "backbone") or compose_config([]).backbone.name]
    names = list(backbones) if isinstance(backbones, (list, ListConfig)) else [backbones]
    known = list_backbones()
    unknown = [b for b in names if b not in known]
    duplicates = sorted({b for b in names if names.count(b) > 1})
    if not names or unknown or duplicates:
        why = f"unknown {unknown}" if unknown else f"{duplicates} twice" if duplicates else "none"
        raise ValueError(
            f"'study.backbones' should list distinct backbones out of {known} (or be null) but "
            f"names {why}: {names}"
        )
    return names


# What a search's run config may change between invocations: where it writes and how it runs
# (the trainer's runtime keys: progress, threads, ...), as for a run's own identity.
UNSIGNED = ("output_dir", *(f"trainer.{key}" for key in RUNTIME_KEYS))
SIGNATURE = "run_config"  # the Optuna study's user attribute holding its run config


def check_resumed_search(search, cfg: DictConfig, searched: list[str], where: str) -> None:
    """A search resumed from the storage ran ``cfg`` (less :data:`UNSIGNED` and the
    ``searched`` keys); another config is refused in one line naming what changed, since its
    trials would mix with this one's. A new search records ``cfg``."""
    flat = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    now = {k: v for k, v in flat.items() if k not in UNSIGNED and k not in searched}
    before = search.user_attrs.get(SIGNATURE)
    if before is None:
        search.set_user_attr(SIGNATURE, now)
        return
    before = {k: v for k, v in before.items() if k not in UNSIGNED}  # recorded by older versions
    changed = sorted(set(before) ^ set(now) | {k for k in now if before.get(k, now[k]) != now[k]})
    if changed:
        shown = ", ".join(f"{k}: {before.get(k, '-')!r} -> {now.get(k, '-')!r}"
                          for k in changed[:3])  # fmt: skip
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ValueError(
            f"the study's storage holds a search of {where} with another run config ({shown}"
            f"{more}): its trials would mix with this config's; give another 'study.name' or "
            f"'study.output_dir', or restore the config"
        )


def check_run_config(method: str, backbone: str, space: dict | None, s: DictConfig, compose):
    """Compose (``compose(point)``) and check ``method``'s run config on ``backbone`` at the
    first point of its search ``space`` (None: not searched), and each choice of its estimator
    settings; returns the config."""
    params = first_point(space) if space else {}
    try:
        cfg = compose(params)
    except HydraException as err:
        where = f"'space.{method}'" if params else "'study.overrides'"
        raise ValueError(
            f"{where}: the {backbone} run config for {method!r} does not compose: {err}"
        ) from err
    check_config(cfg)
    if s.get("task_seeds") and "task_seed" not in (cfg.data.get("options") or {}):
        raise ValueError(
            f"'study.task_seeds' places the keys of planted data, but data "
            f"{cfg.data.name!r} has no 'task_seed' option; set study.task_seeds=null"
        )
    est = cfg.get("estimator")
    if est is not None:
        check_start_orders(f"{method!r}'s estimator.init", [est.init])
    check_choices(method, space, params, compose)
    return cfg


def check_choices(method: str, space: dict | None, params: dict, compose) -> None:
    """Each choice of an estimator setting in ``method``'s ``space`` (the first is ``params``'),
    composed by ``compose(point)`` and checked, so that none fails later inside a trial."""
    for key, spec in (space or {}).items():
        if spec["type"] == "categorical" and key.startswith("estimator.options."):
            for choice in spec["choices"][1:]:
                try:
                    check_config(compose({**params, key: choice}))
                except ValueError as err:
                    raise ValueError(f"'space.{method}.{key}' offers {choice!r}: {err}") from err
