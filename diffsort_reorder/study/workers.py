"""Local parallel workers (``study.jobs``): one study shared by several processes of this machine.

``study.jobs=N`` makes the command that was run the first of N workers: it starts N - 1 more, the
same command with ``study.jobs=1`` and ``study.report=false``, and each takes its share of the
cores (``OMP_NUM_THREADS``, read by :func:`~..run.runtime.choose_threads`). They share the study's
storage as workers on a cluster do (its locks, trials and recorded runs), so the results are those
of one worker: every run has the same config and seed whichever worker trains it. The first writes
the report once its own work is done and the others have ended; each other worker's output goes to
``<output_dir>/workers/worker-K.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ..run.runtime import cores_available, share_of_cores


def jobs_of(setting) -> int:
    """``study.jobs``: a positive integer, or ``auto``: one worker per core this process may use
    on a CPU machine, one where CUDA is present (workers would share its GPU, each with a CUDA
    context and batches of its own)."""
    if setting == "auto":
        return 1 if torch.cuda.is_available() else cores_available()
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"'study.jobs' should be auto or a positive integer but got {setting!r}")
    return setting


__all__ = ["Workers", "jobs_of", "share_of_cores"]


class Workers:
    """The N - 1 workers this command starts beside itself (none for one job)."""

    def __init__(self, argv: list[str], jobs: int, output_dir: Path) -> None:
        self.argv, self.jobs, self.folder = list(argv), jobs, output_dir / "workers"
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def command(self) -> list[str]:
        """This study's command for a worker: the user's overrides, one job, no report."""
        return [sys.executable, "-m", "diffsort_reorder.study", *self.argv,
                "study.jobs=1", "study.report=false", "study.progress=false"]  # fmt: skip

    def environment(self) -> dict[str, str]:
        """Each worker's environment: its share of the cores, unless the user chose threads."""
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(share_of_cores(self.jobs)))
        return env

    def start(self) -> None:
        """Start the other workers, each writing to its own log file."""
        if self.jobs <= 1:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for k in range(2, self.jobs + 1):
            log = self.folder / f"worker-{k}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    self.command(), stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=self.environment(),
                )  # fmt: skip
            self.started.append((proc, log))

    def wait(self) -> list[str]:
        """Wait for the other workers to end; one line for each that failed."""
        failed = []
        for k, (proc, log) in enumerate(self.started, start=2):
            code = proc.wait()
            if code != 0:
                failed.append(f"worker {k} exited with status {code}; its output: {log}")
        return failed

    def stop(self, grace: float = 10.0) -> None:
        """End the other workers (this one was interrupted): their trials are run again. Ctrl-C
        reached them too (one process group), so each gets ``grace`` seconds to finish its own
        clean-up (failing its trial, letting its locks go) before it is told to stop, then 30 s
        more before it is killed."""
        for proc, _ in self.started:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.terminate()
        for proc, _ in self.started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
