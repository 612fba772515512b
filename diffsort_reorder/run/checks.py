"""What a run config can get wrong, checked before any data is loaded or any step is trained.

:func:`check_config` is the one gate: the command line runs it inside its one-line error frame,
the study runs it on every run config a study will compose, and ``build_run`` runs it again.
Each refusal names the key, the value and what is accepted.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from estimators import create_estimator
from estimators.registry import ESTIMATORS

from ..checks import (
    check_bool,
    check_choice,
    check_clip,
    check_complete,
    check_int,
    check_number,
    check_path,
    check_writable,
    is_real,
)
from ..data import check_data_root
from ..model import POS_EMBEDS
from ..orders.methods import kind_of
from .runtime import use_amp
from .schedules import LR_RESTARTS, POLICY_LR_SCHEDULES, TAU_SCHEDULES

DEVICES = ("auto", "cpu", "cuda")


def _optional(check):
    return lambda key, value: None if value is None else check(key, value)


def _progress(key: str, value):
    return value if value == "auto" else check_bool(key, value)


# Every trainer setting and its check; a key not listed here is refused.
TRAINER = {
    "epochs": lambda k, v: check_int(k, v, 1),
    "batch_size": lambda k, v: check_int(k, v, 1),
    "eval_batch_size": lambda k, v: check_int(k, v, 1),
    "num_workers": lambda k, v: check_int(k, v, 0),
    "lr": check_number,
    "weight_decay": lambda k, v: check_number(k, v, strict=False),
    "warmup_epochs": check_int,
    "lr_restart": lambda k, v: check_choice(k, v, list(LR_RESTARTS)),
    "grad_clip": check_clip,
    "device": lambda k, v: check_choice(k, v, DEVICES),
    "amp": lambda k, v: use_amp(v, torch.device("cpu")),
    "compile": check_bool,
    "checkpoint": check_bool,
    "resume": check_bool,
    "stop_after_epochs": _optional(check_int),
    "log_every": lambda k, v: check_int(k, v, 1),
    "image_every": lambda k, v: check_int(k, v, 1),
    "progress": _progress,
    "log_dir": _optional(check_path),
    "threads": _optional(lambda k, v: check_int(k, v, 1)),
}
# The trainer settings that hold settings of their own, and their checks.
SECTIONS = {
    "curriculum": {"fixed_epochs": check_int, "policy_epochs": check_int},
    "policy": {
        "warmup_epochs": check_int,
        "lr_schedule": lambda k, v: check_choice(k, v, POLICY_LR_SCHEDULES),
    },
}


def check_section(name: str, section) -> None:
    """``trainer.<name>``: a group holding exactly the settings ``SECTIONS[name]`` checks."""
    checks = SECTIONS[name]
    if not isinstance(section, DictConfig):
        raise ValueError(f"'trainer.{name}' should hold {' and '.join(checks)} but got {section!r}")
    unknown = sorted(set(section) - set(checks))
    if unknown:
        raise ValueError(
            f"'trainer.{name}.{unknown[0]}' is not a {name} setting; the settings are: "
            f"{', '.join(checks)}"
        )
    for key, check in checks.items():
        check(f"trainer.{name}.{key}", section.get(key))


def check_trainer(t: DictConfig, learned: bool) -> None:
    """Every ``trainer.*`` key: known, of its type and range; warm-up and (for a learned method)
    the curriculum fit in ``trainer.epochs``, the policy warm-up in the policy phase."""
    for key in t:
        if key not in SECTIONS and key not in TRAINER:
            raise ValueError(
                f"'trainer.{key}' is not a trainer setting; the settings are: "
                f"{', '.join([*TRAINER, *SECTIONS])}"
            )
    for key, check in TRAINER.items():
        check(f"trainer.{key}", t.get(key))
    for name in SECTIONS:
        check_section(name, t.get(name))
    fixed, policy = t.curriculum.fixed_epochs, t.curriculum.policy_epochs
    if t.warmup_epochs > t.epochs:
        raise ValueError(
            f"'trainer.warmup_epochs' should be at most trainer.epochs ({t.epochs}) but got "
            f"{t.warmup_epochs}"
        )
    if learned and fixed + policy > t.epochs:
        raise ValueError(
            f"'trainer.curriculum' needs fixed_epochs + policy_epochs <= trainer.epochs "
            f"({t.epochs}) but got {fixed} + {policy}"
        )
    if learned and t.policy.warmup_epochs > policy:
        raise ValueError(
            f"'trainer.policy.warmup_epochs' should be at most trainer.curriculum.policy_epochs "
            f"({policy}) but got {t.policy.warmup_epochs}"
        )


def check_estimator(est: DictConfig) -> torch.nn.Module:
    """The estimator group: lr, clip, temperature schedule, and its options (checked by building
    it on two tokens, with the random stream left alone); returns what was built."""
    check_number("estimator.lr", est.lr)
    check_clip("estimator.grad_clip", est.get("grad_clip"))
    check_choice("estimator.tau.schedule", est.tau.schedule, list(TAU_SCHEDULES))
    low, high = est.tau.min, est.tau.max
    if not (is_real(low) and is_real(high) and 0 < low <= high):
        raise ValueError(
            f"'estimator.tau' should have 0 < min <= max (estimators need tau > 0) but got "
            f"min={low!r}, max={high!r}"
        )
    options = OmegaConf.to_container(est.get("options") or {}, resolve=True)
    if "dim" in ESTIMATORS[est.name].extra_required:
        options.setdefault("dim", 1)
    with torch.random.fork_rng(devices=[]):
        return create_estimator(est.name, num_tokens=2, **options)


def check_world_size(cfg: DictConfig, world_size: int, estimator=None) -> None:
    """A run on ``world_size`` processes: each takes an equal part of every batch and, where the
    estimator draws ``num_samples`` permutations per batch (image ``b`` using ``b % num_samples``),
    a whole number of rounds of them, so that its images use the permutations one process gives
    (``estimator``: the estimator built from the config, if any)."""
    batch = cfg.trainer.batch_size
    if batch % world_size:
        fits = [k * world_size for k in (batch // world_size, batch // world_size + 1) if k]
        raise ValueError(
            f"'trainer.batch_size' should be a multiple of the world size ({world_size} "
            f"processes), so that each takes an equal part of every batch, but got {batch}; "
            f"e.g. {' or '.join(map(str, fits))}"
        )
    per_batch = getattr(estimator, "samples", "batch") == "batch"
    draws = getattr(estimator, "num_samples", 1) if per_batch else 1
    if world_size > 1 and (batch // world_size) % draws:
        raise ValueError(
            f"'trainer.batch_size' / world size ({batch} / {world_size} = {batch // world_size} "
            f"images per process) should be a multiple of estimator.options.num_samples "
            f"({draws}), so that each process's images use the permutations one process gives them"
        )


def check_groups(cfg: DictConfig) -> None:
    """``estimator=`` and ``prior=`` configure a method: refused when the method that runs does
    not use them (``estimator=softsort`` beside ``method=row_major`` would train row_major)."""
    est, prior, method = cfg.get("estimator"), cfg.get("prior"), cfg.method
    if est is not None and est.name != method:
        raise ValueError(
            f"estimator={est.name} configures the method {est.name}, but method={method} runs; "
            f"write method={est.name} (it selects its estimator config) or leave estimator= out"
        )
    starts = est.get("init") if est is not None else None
    if prior is not None and prior.name not in (method, starts):
        uses = f"starts from estimator.init={starts}" if est is not None else "does not use it"
        raise ValueError(
            f"prior={prior.name} configures the prior {prior.name}, but method={method} {uses}; "
            f"write method={prior.name}"
            f"{f' or estimator.init={prior.name}' if est is not None else ''}, or leave prior= out"
        )


def check_outputs(cfg: DictConfig) -> None:
    """``output_dir`` and ``trainer.log_dir`` are folders this process can write into: what a
    command checks before the work starts (a caller that builds a run without writing it, such
    as a benchmark with ``output_dir=/dev/null``, skips it)."""
    check_writable("output_dir", cfg.output_dir)
    if cfg.trainer.get("log_dir") is not None:
        check_writable("trainer.log_dir", cfg.trainer.log_dir)


def check_data_files(data: DictConfig) -> None:
    """A dataset read from a folder is there (nothing is read), before any training: a study
    would otherwise fail its first trial on it."""
    options = OmegaConf.to_container(data.get("options") or {}, resolve=True)
    try:
        check_data_root(data.name, options)
    except FileNotFoundError as err:
        raise ValueError(f"'data.options.root': {err}") from None


def check_config(cfg: DictConfig, world_size: int = 1) -> None:
    """A run config as ``diffsort-train`` takes it: every value given, the method, the seed, the
    positional embedding, the patch size, the trainer, the estimator and, for a run on several
    processes, the batch size against ``world_size``."""
    check_complete(cfg)
    learned = kind_of(cfg.method) == "learned"  # an unknown method raises, naming the known ones
    check_int("seed", cfg.seed)
    check_choice("pos_embed", cfg.pos_embed, POS_EMBEDS)
    check_int("data.patch_size", cfg.data.patch_size, 1)
    check_trainer(cfg.trainer, learned and cfg.get("order") is None)
    check_path("output_dir", cfg.output_dir)
    check_groups(cfg)
    check_data_files(cfg.data)
    est = cfg.get("estimator")
    estimator = None if est is None else check_estimator(est)
    check_world_size(cfg, world_size, estimator)
