"""``diffsort-study`` / ``python -m diffsort_reorder.study``: a study from the command line."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from pathlib import Path

import optuna

from ..cli import bad_input, run_command
from ..config import compose_config
from ..run.rundir import RefusedCheckpoint
from .storage import StorageLost
from .storage.base import one_line
from .study import Study, StudyStopped
from .workers import Workers, jobs_of, share_of_cores


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
    try:
        with bad_input():  # methods, spaces, storage and every run config, before any training
            study = Study(cfg)
    except StorageLost as err:  # the database went away while the study opened, for too long
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop: like Ctrl-C, retried later
    jobs = jobs_of(cfg.study.jobs)
    os.environ.setdefault("OMP_NUM_THREADS", str(share_of_cores(jobs)))  # this worker's share
    workers = Workers(sys.argv[1:] if argv is None else argv, jobs, study.output_dir)
    workers.start()
    try:
        report = run_study(study)
    except BaseException:
        workers.stop()  # interrupted: the others' trials and runs are run again next time
        raise
    if report is None:  # stopped (study.stop_after_runs)
        workers.stop()
        return
    for line in workers.wait():
        print(f"warning: {line}", file=sys.stderr)
    print(report)


def run_study(study: Study) -> Path | None:
    """Run ``study``; its report's path, or None when it stopped early. A lost storage or a file
    error ends the command in one line (exit status 1)."""
    try:
        with bad_input((RefusedCheckpoint,)):  # a run folder's crafted checkpoint
            return study.run()
    except StudyStopped as stop:
        print(f"{stop}; run the same command again to continue", file=sys.stderr)
        return None
    except study.backend.lost as err:  # the storage went away mid-study (for too long)
        print(f"error: {study.backend.lost_message(err)}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:  # a full disk, a read-only folder: the trial or run is run again
        print(f"error: {one_line(err)}; nothing of it was recorded as final: free the space "
              f"or fix the folder, then run the same command again", file=sys.stderr)  # fmt: skip
        sys.exit(1)


def console() -> None:
    """The ``diffsort-study`` console script (``main``, returning no value)."""
    main()


if __name__ == "__main__":
    main()
