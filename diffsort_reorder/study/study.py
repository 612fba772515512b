"""The study: which estimator learns the best patch order, for which backbone, against fixed
scans and priors.

``diffsort-study [study=<name>] [study.key=value ...]`` (or ``python -m diffsort_reorder.study``)
composes ``configs/study.yaml`` with Hydra. For every backbone in ``study.backbones`` and every
learned method, Optuna searches the space in ``configs/space/`` (one Optuna study per backbone and
method, in one storage); each trial's run config is composed from ``configs/config.yaml`` and run
by :func:`train`, which reports the validation accuracy every epoch to the pruner. Fixed orders
(scan orders, priors) are not searched. Then the whole pipeline is replicated on the study's seeds
(the same for every method, so results pair by seed): each seed runs the best config through the
curriculum and learns its own order; under ``retrain`` a fresh model is trained on that seed's own
order. Search, pruning and trial selection read the validation split; every reported number reads
the test split. :mod:`.report` writes ``report.md``, ``results.csv`` (paired differences with
Holm-corrected p-values), ``results_by_seed.csv`` and the figures. The path of ``report.md`` is
printed last.

Re-running the same command resumes: finished trials and seed runs are kept, and a trial that was
interrupted (Ctrl-C, a killed worker) is run again with its parameters from its last checkpoint. A
trial whose loss or gradient goes non-finite, or that runs out of memory, ends FAIL with the reason
in its ``fail_reason`` attribute, and the study goes on. Any number of workers may share a study:
they coordinate through its storage alone (``study.storage``; :mod:`.storage`, :mod:`.search`);
``study.jobs`` starts local ones (:mod:`.workers`).
"""

from __future__ import annotations

import itertools
import sys
import zlib
from pathlib import Path

import optuna
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..config import compose_config, config_digest
from ..orders.methods import (
    is_learned,
    learns_one_order,
)
from ..run.build import readout_window_of
from ..run.loop import train
from ..run.result import RunResult
from ..run.runtime import show_progress
from .checks import check_resumed_search, check_run_config, check_study
from .report import best_trial, write_report
from .search import DONE, RAN, describe, is_final, pause, search_step
from .seeds import SeedJob, seed_jobs, study_seeds, task_seed_of, train_seed_run
from .space import (
    build_pruner,
    build_sampler,
    check_space,
    in_space,
    override_value,
    suggest,
)
from .storage import open_backend
from .work import collect, seed_step
from .workers import jobs_of


class StudyStopped(Exception):
    """``study.stop_after_runs`` was reached (as if interrupted)."""


class Study:
    """One invocation of a study; :meth:`run` searches, re-runs the best configs and reports."""

    def __init__(self, cfg: DictConfig) -> None:
        s = cfg.study
        self.cfg, self.s = cfg, s
        self.methods, self.protocols, self.backbones = check_study(s)
        # The oracle order: a reference row (never searched, never a "best fixed" order).
        self.runs = [*self.methods, *(["oracle"] if s.get("oracle") else [])]
        self.spaces = {
            m: check_space(m, cfg.space.get(m)) for m in self.methods if is_learned(m)
        }  # fmt: skip
        self.output_dir = Path(s.output_dir)
        self.seeds = study_seeds(s)  # every method's: paired
        # Every run's config composes now, before any training: a bad key fails here.
        self.checked = {(b, m): self.check_run_config(m, b)
                        for b in self.backbones for m in self.runs}  # fmt: skip
        # Everything workers share goes through the storage: trials, finished runs, locks.
        heartbeat = (s.heartbeat_interval, s.grace_period)
        self.backend = open_backend(s.storage, self.output_dir, heartbeat, s.reconnect_seconds,
                                    jobs_of(s.get("jobs", 1)))  # fmt: skip
        self.storage = self.backend.storage
        self.locks = self.backend.locks(s.name)
        self.records = self.backend.records(s.name, self.output_dir / "train")  # owed runs first
        for backbone in self.backbones:  # a resumed search ran these configs: never mixes
            for method, space in self.spaces.items():
                check_resumed_search(self.optuna_study(method, backbone),
                                     self.checked[backbone, method], list(space),
                                     f"{backbone}/{method}")  # fmt: skip
        self.composed: dict[str, tuple] = {}  # seed runs' configs (seed_config)
        self.runs_done = 0
        self.bar = None

    # --- run configs
    def run_config(
        self, method: str, backbone: str, seed: int, name: str, params: dict, extra=()
    ) -> DictConfig:
        run = f"{backbone}/{method}/{name}"
        task_seed = task_seed_of(self.s.get("task_seeds"), self.seeds, seed)
        replaced = {"backbone", *(["data.options.task_seed"] if task_seed is not None else [])}
        overrides = [
            *(o for o in self.s.overrides if o.partition("=")[0] not in replaced),
            f"backbone={backbone}",
            *([f"data.options.task_seed={task_seed}"] if task_seed is not None else []),
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

    def check_run_config(self, method: str, backbone: str) -> DictConfig:
        """Compose and check ``method``'s run config on ``backbone`` (at the search's first
        point); returns it."""
        compose = lambda point: self.run_config(method, backbone, self.s.seed, "check", point)  # noqa: E731
        return check_run_config(method, backbone, self.spaces.get(method), self.s, compose)

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
        per_backbone = len(self.spaces) * self.s.n_trials + len(self.runs) * len(self.seeds)
        if "retrain" in self.protocols:
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
                # With a reason, a failed trial is final: a re-run does not retry it. Only the
                # run's own failures get one; anything else stops this worker and the trial
                # is run again with the same parameters.
                if is_final(err):
                    trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
                if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise
            trial.set_user_attr("train_seconds", result.train_seconds)
            if result.order is not None:  # the order this trial learned, for the record
                trial.set_user_attr("order", result.order)
            if result.marginal_error is not None:  # a Sinkhorn-based estimator's convergence
                trial.set_user_attr("marginal_error", result.marginal_error)
            return result.metric(metric)

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

    def search_step(self, method: str, backbone: str) -> str:
        """One trial of ``method``'s search on ``backbone`` if this worker may run one now:
        :func:`.search.search_step`'s RAN, BUSY or DONE (``study.n_trials``, all workers
        together)."""
        base = f"{self.s.seed}/{backbone}/{method}"

        def sampler(n: int) -> optuna.samplers.BaseSampler:
            return build_sampler(self.s.sampler, zlib.crc32(f"{base}/{n}".encode()))

        def tick(trial: optuna.trial.FrozenTrial, seconds: float) -> None:
            self.tick(f"{backbone}/{method} trial {trial.number}: {describe(trial)} "
                      f"({seconds:.1f} s)")  # fmt: skip

        start = self.s.start_from_defaults
        return search_step(
            self.optuna_study(method, backbone),
            self.objective(method, backbone),
            n_trials=self.s.n_trials,
            lock=lambda: self.locks.hold(f"search/{backbone}/{method}"),
            sampler=sampler,
            first_point=(lambda: self.default_point(method, backbone)) if start else None,
            heartbeat=self.backend.heartbeat if self.backend.heartbeats else None,
            grace_period=self.s.grace_period,
            tick=tick,
        )

    # --- seed re-runs
    def seed_run(self, job: SeedJob | RunResult | None, wait: bool = True) -> RunResult | None:
        """The result of the seed run ``job``: recorded in the storage by whichever worker
        trained it, else trained here. With an ``order`` (the retrain protocol) the run trains a
        fresh model on that fixed order. None when another worker is training it and ``wait``
        is False. A run that failed (:data:`TRIAL_ERRORS`) is recorded as failed, and final.
        A ``job`` that is already a result (or None: not known yet) is returned as it is."""
        if not isinstance(job, SeedJob):
            return job
        cfg, digest = self.seed_config(job)
        result = self.records.get(job.key, digest)
        if result is not None:
            return result
        with self.locks.hold(f"run/{job.key}", wait) as held:
            if not held:
                return None
            result, trained = self.records.get(job.key, digest), False  # done while it waited
            if result is None:  # recorded before the lock goes (owed if the storage is down)
                result, trained = train_seed_run(cfg, train)
                self.records.put(job.key, digest, result, cfg.output_dir)
        if trained:
            summary = result.failed or f"{self.s.metric} {result.metric(self.s.metric):.3f}"
            self.tick(f"{job.backbone}/{job.method} {job.name}: {summary} "
                      f"({result.wall_seconds:.1f} s)")  # fmt: skip
        return result

    def seed_config(self, job: SeedJob) -> tuple[DictConfig, str]:
        """``job``'s run config and its digest, composed once per invocation (the report's
        pass asks again for every run)."""
        if job.key not in self.composed:  # one best config per method and backbone per run
            extra = [] if job.order is None else [f"order=[{','.join(map(str, job.order))}]"]
            cfg = self.run_config(job.method, job.backbone, job.seed, job.name, job.params, extra)
            self.composed[job.key] = (cfg, config_digest(_root_=cfg))
        return self.composed[job.key]

    def run(self) -> Path:
        s = self.s
        self.bar = tqdm(total=self.total_runs(), desc=s.name, unit="run", file=sys.stderr,
                        disable=not show_progress(s.progress))  # fmt: skip
        try:
            jobs = self.work()
        finally:
            self.bar.close()
        # The report, from the storage alone (waiting for other workers' runs, or training
        # those a killed worker left): every worker that gets here writes the same one.
        results, sources = collect(self, jobs)
        if not s.get("report", True):  # a worker study.jobs started: the first one reports
            return self.output_dir / "report.md"
        searches = {(b, m): self.optuna_study(m, b) for b, m in jobs if m in self.spaces}
        return write_report(self.output_dir, self.cfg, searches, results, sources,
                            self.readout_windows(results))  # fmt: skip

    def work(self) -> dict[tuple[str, str], list[SeedJob]]:
        """This worker's share of the work: a search trial whenever one may be taken (every
        learned method's search on every backbone, in order), else a seed run no worker holds
        (a method's runs once its search is done; each seed's retrain once its curriculum run
        is); with nothing to take, it looks again after a pause. Returns each (backbone,
        method)'s curriculum runs once every search is done."""
        searching = [(b, m) for b in self.backbones for m in self.methods if m in self.spaces]
        jobs: dict[tuple[str, str], list[SeedJob]] = {}
        while True:
            state = None
            for backbone, method in list(searching):
                state = self.search_step(method, backbone)
                if state == DONE:
                    searching.remove((backbone, method))
                elif state == RAN:
                    break
            if state == RAN:
                continue
            for key in (k for k in itertools.product(self.backbones, self.runs) if k not in jobs):
                if key not in searching:  # a fixed order, or its search is done
                    searched = key[1] in self.spaces
                    best = best_trial(self.optuna_study(key[1], key[0])) if searched else None
                    failed = searched and best is None  # every trial failed
                    jobs[key] = [] if failed else seed_jobs(key[1], key[0], best, self.seeds)
            if seed_step(self, jobs):
                continue
            if not searching:
                return jobs
            pause()

    def readout_windows(self, results: dict) -> dict[str, int | None]:
        """Each backbone's readout window on the grid its runs read (for the order maps)."""
        windows: dict[str, int | None] = {}
        for (_, backbone, method), runs in results.items():
            grid = next((r.grid for r in runs if r.grid), None)
            if grid and backbone not in windows:
                windows[backbone] = readout_window_of(self.checked[backbone, method], tuple(grid))
        return windows
