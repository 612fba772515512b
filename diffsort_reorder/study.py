"""The study: which estimator learns the best patch order, for which backbone, against fixed
scans and priors.

``diffsort-study [study=<name>] [study.key=value ...]`` (or ``python -m diffsort_reorder.study``)
composes ``configs/study.yaml`` with Hydra. For every backbone in ``study.backbones`` and every
learned method, Optuna searches the space in ``configs/space/`` (one Optuna study per backbone and
method, in one storage); each trial's run config is composed from ``configs/config.yaml`` and run
by :func:`train`, which reports the validation accuracy every epoch to the pruner. Fixed orders
(scan orders, priors) are not searched. Then every method is re-run on the same seeds (so results
pair by seed) under each protocol: ``curriculum`` re-runs the best config's curriculum, ``retrain``
freezes the order the best trial learned and trains a fresh model on it.
:mod:`diffsort_reorder.report` writes ``report.md``, ``results.csv`` (with paired differences and
their intervals) and the figures. The path of ``report.md`` is printed last.

Re-running the same command resumes: finished trials and seed runs are kept, and a trial that was
interrupted (Ctrl-C, a killed worker) is run again with its parameters from its last checkpoint. A
trial whose loss or gradient goes non-finite, or that runs out of memory, ends FAIL with the reason
in its ``fail_reason`` attribute, and the study goes on. Several workers may share a study through
``study.storage=`` (a journal file or a database URL; never SQLite for several processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import logging
import shutil
import signal
import sys
import time
import warnings
import zlib
from pathlib import Path

import optuna
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import TrialState
from tqdm import tqdm

from .backbones import list_backbones
from .cli import bad_input, run_command
from .config import compose_config, to_yaml, value_of
from .config_checks import check_config
from .methods import (
    check_not_oracle,
    check_start_orders,
    is_learned,
    learns_one_order,
    list_methods,
)
from .report import best_trial, write_report
from .runtime import show_progress
from .space import check_space, first_point, in_space, override_value, suggest
from .train import train

# Failures that end one trial (FAIL, with the reason) and let the study go on.
TRIAL_ERRORS = (FloatingPointError, torch.OutOfMemoryError)
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30  # a worker silent for 30 s is dead
POLL_SECONDS = 5.0
METRICS = ("val_acc", "best_val_acc")
# curriculum: REOrder's (fixed order, policy, frozen order) in every seed run; retrain: the order
# the best search trial learned, frozen, and a fresh model trained on it in every seed run.
PROTOCOLS = ("curriculum", "retrain")
log = logging.getLogger(__name__)


class StudyStopped(Exception):
    """``study.stop_after_runs`` was reached (as if interrupted)."""


# --------------------------------------------------------------------------- checking the input
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
    return _build("sampler", SAMPLERS, cfg, seed=seed)


def build_pruner(cfg) -> optuna.pruners.BasePruner:
    return _build("pruner", PRUNERS, cfg)


# --------------------------------------------------------------------------- storage
def open_storage(url: str | None, output_dir: Path):
    """The Optuna storage ``url`` names: None for SQLite in ``output_dir``, a file ending in
    .log/.journal/.jsonl (or ``journal:<path>``) for a journal, else an RDB URL."""
    if url is None:
        output_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(output_dir / 'study.db').resolve()}"
    try:
        if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Heartbeats let a re-run see a killed worker's trial as interrupted.
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
            )
    except Exception as err:  # noqa: BLE001  (SQLAlchemy, OS and Optuna errors alike)
        raise ValueError(
            f"'study.storage' {url!r} could not be opened ({type(err).__name__}: {err}); give an "
            f"Optuna database URL (sqlite:///path.db, postgresql://...) or a journal file (*.log)"
        ) from err


# --------------------------------------------------------------------------- the study
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


class Study:
    """One invocation of a study; :meth:`run` searches, re-runs the best configs and reports."""

    def __init__(self, cfg: DictConfig) -> None:
        s = cfg.study
        self.cfg, self.s = cfg, s
        self.methods = check_methods(s.methods)
        self.protocols = check_protocols(s.protocol)
        self.backbones = check_backbones(s.get("backbones"), s.overrides)
        for key in ("n_trials", "seeds"):
            if not isinstance(s[key], int) or s[key] < 1:
                raise ValueError(f"'study.{key}' should be an integer >= 1 but got {s[key]!r}")
        if s.metric not in METRICS:
            raise ValueError(f"'study.metric' should be one of {METRICS} but got {s.metric!r}")
        build_sampler(s.sampler, s.seed), build_pruner(s.pruner)  # both check their settings
        unknown = sorted(set(s.get("method_overrides") or {}) - set(list_methods()))
        if unknown:
            raise ValueError(f"'study.method_overrides' names unknown methods {unknown}")
        unknown = sorted(set(s.get("backbone_overrides") or {}) - set(list_backbones()))
        if unknown:
            raise ValueError(f"'study.backbone_overrides' names unknown backbones {unknown}")
        self.spaces = {
            m: check_space(m, cfg.space.get(m)) for m in self.methods if is_learned(m)
        }  # fmt: skip
        self.output_dir = Path(s.output_dir)
        self.seeds = [s.seed + k for k in range(1, s.seeds + 1)]  # every method's: paired
        # Every run's config composes now, before any training: a bad key fails here.
        for backbone in self.backbones:
            for method in self.methods:
                self.check_run_config(method, backbone)
        self.storage = open_storage(s.storage, self.output_dir)
        self.runs_done = 0
        self.bar = None

    # --- run configs
    def run_config(
        self, method: str, backbone: str, seed: int, name: str, params: dict, extra=()
    ) -> DictConfig:
        run = f"{backbone}/{method}/{name}"
        overrides = [
            *(o for o in self.s.overrides if o.partition("=")[0] != "backbone"),
            f"backbone={backbone}",
            *(self.s.get("backbone_overrides") or {}).get(backbone, []),
            *(self.s.method_overrides or {}).get(method, []),
            f"method={method}",
            f"seed={seed}",
            f"output_dir={self.output_dir.resolve() / 'train' / run}",
            f"trainer.log_dir={self.output_dir.resolve() / 'runs' / self.s.name / run}",
            "trainer.progress=false",
            *(f"{key}={override_value(value)}" for key, value in params.items()),
            *extra,
        ]
        return compose_config(overrides)

    def check_run_config(self, method: str, backbone: str) -> None:
        params = first_point(self.spaces[method]) if method in self.spaces else {}
        try:
            cfg = self.run_config(method, backbone, self.s.seed, "check", params)
        except HydraException as err:
            where = f"'space.{method}'" if params else "'study.overrides'"
            raise ValueError(
                f"{where}: the {backbone} run config for {method!r} does not compose: {err}"
            ) from err
        check_config(cfg)
        options = cfg.data.get("options") or {}
        if "retrain" in self.protocols and "task_seed" in options and options.task_seed is None:
            raise ValueError(
                f"'study.protocol' retrain evaluates an order learned on seed {self.s.seed} on "
                f"other seeds, but data {cfg.data.name!r} draws a new task (its key patches) from "
                f"every seed; pin it with 'data.options.task_seed=<int>' in 'study.overrides'"
            )
        est = cfg.get("estimator")
        if est is not None:
            check_start_orders(f"{method!r}'s estimator.init", [est.init])
        # Each choice of an estimator setting, so that none fails later inside a trial.
        for key, spec in (self.spaces.get(method) or {}).items():
            if spec["type"] == "categorical" and key.startswith("estimator.options."):
                for choice in spec["choices"][1:]:
                    point = {**params, key: choice}
                    try:
                        check_config(self.run_config(method, backbone, self.s.seed, "check", point))
                    except ValueError as err:
                        raise ValueError(
                            f"'space.{method}.{key}' offers {choice!r}: {err}"
                        ) from err

    # --- progress
    def tick(self, line: str) -> None:
        self.runs_done += 1
        if self.bar is not None:
            self.bar.update(1)
        tqdm.write(line, file=sys.stderr)
        stop = self.s.stop_after_runs
        if stop is not None and self.runs_done >= stop:
            raise StudyStopped(f"stopped after {self.runs_done} runs (study.stop_after_runs)")

    def total_runs(self) -> int:
        per_backbone = len(self.spaces) * self.s.n_trials + len(self.methods) * len(self.seeds)
        if "retrain" in self.protocols and "curriculum" in self.protocols:
            per_backbone += sum(map(learns_one_order, self.methods)) * len(self.seeds)
        return per_backbone * len(self.backbones)

    # --- search
    def optuna_study(self, method: str, backbone: str) -> optuna.Study:
        seed = zlib.crc32(f"{self.s.seed}/{backbone}/{method}".encode())  # a sampler seed each
        sampler, pruner = build_sampler(self.s.sampler, seed), build_pruner(self.s.pruner)
        return optuna.create_study(
            study_name=f"{self.s.name}/{backbone}/{method}", storage=self.storage,
            sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True,
        )  # fmt: skip

    def objective(self, method: str, backbone: str):
        space, metric = self.spaces[method], self.s.metric

        def run_trial(trial: optuna.Trial) -> float:
            params = {key: suggest(trial, key, spec) for key, spec in space.items()}
            # A retried trial continues its original's run directory (and checkpoint).
            name = f"trial-{trial.user_attrs.get('retry_of', trial.number):04d}"
            cfg = self.run_config(method, backbone, self.s.seed, name, params)

            def report(epoch: int, metrics: dict) -> None:
                trial.report(metrics["val_acc"], epoch)
                if epoch < cfg.trainer.epochs and trial.should_prune():  # a finished run stays
                    raise optuna.TrialPruned(f"epoch {epoch}: val_acc {metrics['val_acc']:.4f}")

            try:
                result = train(cfg, on_epoch=report)
            except optuna.TrialPruned:
                raise
            except Exception as err:
                # With a reason, a failed trial is final: a re-run does not retry it. Only
                # TRIAL_ERRORS let the study go on; anything else stops it, loudly.
                trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
                if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise
            trial.set_user_attr("train_seconds", result["train_seconds"])
            if result["order"] is not None:  # what the retrain protocol freezes
                trial.set_user_attr("order", result["order"])
            return result[metric]

        return run_trial

    def default_point(self, method: str, backbone: str) -> dict:
        """The values the run config has for ``method``'s search keys, where they lie in the
        space: the hand-set defaults of ``configs/estimator/``, tried first."""
        cfg = self.run_config(method, backbone, self.s.seed, "defaults", {})
        point = {}
        for key, spec in self.spaces[method].items():
            value = OmegaConf.select(cfg, key)
            if in_space(value, spec):
                point[key] = value
        return point

    def search(self, method: str, backbone: str) -> optuna.Study:
        study = self.optuna_study(method, backbone)
        objective = self.objective(method, backbone)
        lock = self.output_dir / f".{backbone}.{method}.queue.lock"
        with exclusive(lock):  # one worker at a time decides what to enqueue
            if self.s.start_from_defaults and not study.get_trials(deepcopy=False):
                study.enqueue_trial(self.default_point(method, backbone))
        waited = 0.0
        while True:
            with warnings.catch_warnings():  # RDB heartbeats: a killed worker's trial is FAIL
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            with exclusive(lock):
                requeue_interrupted(study)
                trials = study.get_trials(deepcopy=False)
            if sum(counts_toward_budget(t) for t in trials) >= self.s.n_trials:
                running = [t for t in trials if t.state == TrialState.RUNNING]
                if not running or waited >= self.s.wait_for_workers:
                    return study  # (a journal has no heartbeats: a dead worker's trial stays)
                # Other workers' trials (or a killed one's, until its heartbeat is stale) may
                # still change the best config: wait for them.
                if not waited:
                    tqdm.write(f"{backbone}/{method}: waiting for {len(running)} running "
                               f"trial(s)", file=sys.stderr)  # fmt: skip
                time.sleep(POLL_SECONDS)
                waited += POLL_SECONDS
                continue
            # A sampler seeded by the history, so a resumed study does not redraw its points.
            seed = zlib.crc32(f"{self.s.seed}/{backbone}/{method}/{len(trials)}".encode())
            study.sampler = build_sampler(self.s.sampler, seed)
            started, finished = time.perf_counter(), []
            record = functools.partial(_record, finished)
            study.optimize(objective, n_trials=1, catch=TRIAL_ERRORS, callbacks=[record])
            seconds = time.perf_counter() - started
            self.tick(f"{backbone}/{method} trial {finished[-1].number}: "
                      f"{describe(finished[-1])} ({seconds:.1f} s)")  # fmt: skip

    # --- seed re-runs
    def seed_run(
        self, method: str, backbone: str, params: dict, seed: int, order: list | None = None
    ) -> dict:
        """Run (or reuse) ``method`` with ``params`` and ``seed``; one worker at a time. With an
        ``order`` (the retrain protocol) the run trains a fresh model on that fixed order."""
        name = f"seed-{seed}" if order is None else f"retrain-seed-{seed}"
        extra = [] if order is None else [f"order=[{','.join(map(str, order))}]"]
        cfg = self.run_config(method, backbone, seed, name, params, extra)
        run_dir, log_dir = Path(cfg.output_dir), Path(cfg.trainer.log_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(run_dir.parent / f".{name}.lock"):
            config_path = run_dir / "config.yaml"
            if config_path.exists() and config_path.read_text() != to_yaml(cfg):
                # another best config than last time: start this seed afresh
                shutil.rmtree(run_dir)
                shutil.rmtree(log_dir, ignore_errors=True)
            done = finished_result(run_dir)
            if done is not None:
                return done
            started = time.perf_counter()
            try:
                result = train(cfg)
            except TRIAL_ERRORS as err:
                result = {"failed": f"{type(err).__name__}: {err}", "seed": seed}
            result["wall_seconds"] = round(time.perf_counter() - started, 2)
        summary = result.get("failed") or f"{self.s.metric} {result[self.s.metric]:.3f}"
        self.tick(f"{backbone}/{method} {name}: {summary} ({result['wall_seconds']:.1f} s)")
        return result

    def seed_runs(self, protocol: str, method: str, backbone: str, best) -> list[dict]:
        """The seed re-runs of ``method`` under ``protocol``: its best trial's config through the
        whole curriculum, or (``retrain``, global learned orders) that trial's learned order
        frozen for a fresh model. Fixed orders and per-image methods run the same either way."""
        params = best.params if best is not None else {}
        order = learned_order(best) if protocol == "retrain" and learns_one_order(method) else None
        return [self.seed_run(method, backbone, params, seed, order) for seed in self.seeds]

    def run(self) -> Path:
        s = self.s
        self.bar = tqdm(total=self.total_runs(), desc=s.name, unit="run", file=sys.stderr,
                        disable=not show_progress(s.progress))  # fmt: skip
        started = time.perf_counter()
        searches: dict[tuple[str, str], optuna.Study] = {}
        results: dict[tuple[str, str, str], list[dict]] = {}
        try:
            for backbone in self.backbones:
                for method in self.methods:
                    if method in self.spaces:
                        self.bar.set_description(f"{s.name}: search {backbone}/{method}")
                        searches[backbone, method] = self.search(method, backbone)
                for protocol in self.protocols:
                    for method in self.methods:
                        self.bar.set_description(f"{s.name}: {protocol} {backbone}/{method}")
                        best = best_trial(searches.get((backbone, method)))
                        if method in self.spaces and best is None:
                            results[protocol, backbone, method] = []  # every trial failed
                            continue
                        results[protocol, backbone, method] = self.seed_runs(
                            protocol, method, backbone, best
                        )
        finally:
            self.bar.close()
        return write_report(
            self.output_dir, self.cfg, searches, results,
            wall_seconds=time.perf_counter() - started,
        )  # fmt: skip


def learned_order(trial: optuna.trial.FrozenTrial) -> list[int]:
    """The order a finished search trial learned (recorded with it, else in its run)."""
    if "order" in trial.user_attrs:
        return list(trial.user_attrs["order"])
    raise ValueError(
        f"search trial {trial.number} recorded no learned order; re-run its study with a fresh "
        f"'study.output_dir' to use study.protocol=retrain"
    )


def _record(finished: list, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    finished.append(trial)  # this worker's trial (another worker's may be newer in the storage)


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished or running trials count; one interrupted (FAIL without our ``fail_reason``) does
    not: it is run again."""
    if trial.state == TrialState.FAIL:
        return "fail_reason" in trial.user_attrs
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def requeue_interrupted(study: optuna.Study) -> None:
    """Enqueue the parameters of each interrupted trial (the latest of its retries) once."""
    latest: dict[int, optuna.trial.FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        latest[trial.user_attrs.get("retry_of", trial.number)] = trial  # in trial order
    for root, trial in latest.items():
        if trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": root})


def describe(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"val {trial.value:.3f}"
    if trial.state == TrialState.PRUNED:
        return f"pruned at epoch {trial.last_step}"
    return f"{trial.state.name} ({trial.user_attrs.get('fail_reason', 'interrupted')})"


def finished_result(run_dir: Path) -> dict | None:
    """The result of the finished run in ``run_dir``, else None."""
    result_path = run_dir / "result.json"
    if not result_path.exists():
        return None
    result = json.loads(result_path.read_text())
    if not result.get("finished"):
        return None
    result.setdefault("wall_seconds", 0.0)
    return result


@contextlib.contextmanager
def exclusive(path: Path):
    """An exclusive lock on ``path`` (a file), so two workers never train one run at once."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """``diffsort-study [study=<name>] [key=value ...]``: run a study, print its report's path."""
    summary = (
        "Search each learned method's space with Optuna, re-run every method on paired seeds, "
        "and write a comparison report (report.md, results.csv, figures)."
    )
    compose = functools.partial(compose_config, config_name="study")
    cfg = run_command("diffsort-study", summary, "study", compose, argv)
    if cfg is None:
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with bad_input():  # methods, spaces, storage and every run config, before any training
        study = Study(cfg)
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop: like Ctrl-C, retried later
    try:
        report = study.run()
    except StudyStopped as stop:
        print(f"{stop}; run the same command again to continue", file=sys.stderr)
        return
    print(report)


def console() -> None:
    """The ``diffsort-study`` console script (``main``, returning no value)."""
    main()


if __name__ == "__main__":
    main()
