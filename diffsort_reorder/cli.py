"""What every command line shares: bad input ends in one line, ``--help`` and ``--cfg``.

``diffsort-train``, ``diffsort-study`` and ``diffsort-priors`` take Hydra overrides
(``key=value``); each composes its config and checks it inside :func:`bad_input`, which turns a
refused value into ``error: <what>`` on stderr and exit status 2, with no traceback
(``DIFFSORT_FULL_ERROR=1`` shows it). Errors raised once training runs (a NaN, out of memory) are
not bad input: they keep their own handling.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable

from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import group_names
from .redact import redacted

FULL_ERROR = "DIFFSORT_FULL_ERROR"
EXIT_BAD_INPUT = 2
# Inside a command's setup these are the user's input: a value, a key, a name, a missing folder.
BAD_INPUT = (ValueError, TypeError, FileNotFoundError, HydraException, OmegaConfBaseException)
# The config groups each command's overrides may pick from, by its primary config.
GROUPS = {
    "config": ("data", "backbone", "estimator", "prior", "trainer"),
    "study": ("study", "space"),
    "priors": ("data", "prior"),
}
# What a command's --help adds below its groups.
NOTES = {
    "study": "A study's runs take their settings (data=, backbone=, trainer.epochs=, ...) from "
    "study.overrides, a list in the study file (study.overrides='[data=digits,...]' replaces it).",
}
# OmegaConf's words for a mandatory value (``???``) read before it was given, and the key.
MISSING_VALUE = re.compile(r"Missing mandatory value: ?([\w.\[\]]+)")


def describe(err: BaseException) -> str:
    """One line for a refused input: which key or name, what it got, what is accepted."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        if group and err.options:
            return (
                f"{group}={name}: no such {group} config; choose one of: {', '.join(err.options)}"
            )
        return f"there is no config {err.missing_cfg_file!r}"
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        known = sorted(cause.parent_node.keys()) if cause.parent_node is not None else []
        where = cause.full_key.rpartition(".")[0] or "the config"
        return (
            f"'{cause.full_key}' is not a key of {where} (its keys: {', '.join(map(str, known))});"
            f" to add a new key write +{cause.full_key}=..."
        )
    missing = MISSING_VALUE.search(str(err)) if isinstance(err, OmegaConfBaseException) else None
    if missing:
        key = missing.group(1)
        return f"'{key}' has no value; give it on the command line: {key}=..."
    if isinstance(err, OverrideParseException):
        override = str(err).splitlines()[0].removeprefix("Error parsing override ")
        return f"the override {override} does not parse; overrides read key=value (Hydra's syntax)"
    return " ".join(str(err).split())


@contextlib.contextmanager
def bad_input(kinds: tuple[type[BaseException], ...] = BAD_INPUT):
    """Refused input inside the block exits with ``error: ...`` and status 2; ``kinds`` are the
    errors that count as refused input there (around training: only a refused resume)."""
    try:
        yield
    except kinds as err:
        if os.environ.get(FULL_ERROR, "") not in ("", "0"):
            raise
        print(f"error: {redacted(describe(err))}", file=sys.stderr)  # no password shown
        raise SystemExit(EXIT_BAD_INPUT) from None


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose refusals are one line, ``error: ...``, with exit status 2."""

    def error(self, message: str):
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def group_options(config_name: str) -> dict[str, list[str]]:
    """The config files of each group ``config_name`` composes, as ``group=<name>`` takes them."""
    return {group: group_names(group) for group in GROUPS[config_name]}


def usage(prog: str, summary: str, config_name: str) -> str:
    groups = "\n".join(
        f"  {group}: {', '.join(names)}" for group, names in group_options(config_name).items()
    )
    note = f"{NOTES[config_name]}\n" if config_name in NOTES else ""
    return (
        f"usage: {prog} [key=value ...] [--cfg] [--help]\n\n{summary}\n\n"
        f"Overrides (Hydra's syntax) apply to configs/{config_name}.yaml; groups:\n{groups}\n"
        f"{note}"
        f"--cfg prints the composed config and exits; {FULL_ERROR}=1 shows the traceback of an "
        f"input error."
    )


def run_command(
    prog: str,
    summary: str,
    config_name: str,
    compose: Callable[[list[str]], DictConfig],
    argv: list[str] | None,
) -> DictConfig | None:
    """Parse ``argv`` (``--help``, ``--cfg``, overrides) and return the config ``compose`` builds
    from the overrides, inside :func:`bad_input`; None when the command is done (help, --cfg)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(usage(prog, summary, config_name))
        return None
    show = "--cfg" in args
    args = [a for a in args if a != "--cfg"]
    with bad_input():
        flags = [a for a in args if a.startswith("-")]
        if flags:
            raise ValueError(f"unknown option {flags[0]!r}; accepted: --cfg, --help, key=value")
        cfg = compose(args)
        shown = redacted(OmegaConf.to_yaml(cfg, resolve=True)) if show else None  # may refuse
    if show:
        print(shown, end="")
        return None
    return cfg
