"""``python -m diffsort_reorder.bench study``: how many of the default study's runs a minute this
machine trains, with one worker and with two, side by side in one invocation.

Each case starts worker processes (this module run as a script) that train ``--repeats`` runs of
the default study's run shape one after another (its ``study.overrides``: planted, a one-block
``txl``, ``trainer=study``; method ``softsort``, each run its own seed) and report each run's
seconds, imports and start-up excluded. The cases:

- **1 job**: one worker on every core (``trainer.threads`` auto), as ``study.jobs=1`` runs;
- **2 jobs**: two workers at once, each on its share of the cores, as ``study.jobs=2`` runs;
- **2 runs side by side**: two workers at once that each take every core (two commands started
  by hand, neither knowing of the other), with OpenMP's threads sleeping while they wait (the
  suite's default, ``OMP_WAIT_POLICY=PASSIVE``), and again spinning (``ACTIVE``, the library's
  default before): the thread policy's case.

Targets (issue 24): two jobs train at least 1.4x the runs a minute of one; two runs side by side
each take at most 2.2x the time of one alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..run.runtime import cores_available
from . import print_results

METHOD = "softsort"
MIN_SPEEDUP = 1.4  # 2 jobs against 1, runs a minute
MAX_SLOWDOWN = 2.2  # a run beside another against alone


def run_shape(folder: Path, seed: int) -> list[str]:
    """The overrides of one run of the default study's shape, writing into ``folder``."""
    from ..config import compose_config

    study = compose_config([], config_name="study").study
    return [*study.overrides, f"method={METHOD}", f"seed={seed}", f"output_dir={folder}",
            "trainer.checkpoint=false", "trainer.progress=false",
            f"trainer.log_dir={folder / 'tb'}"]  # fmt: skip


def worker(runs: int, folder: Path, first_seed: int) -> list[float]:
    """Train ``runs`` runs of the shape one after another; each one's seconds."""
    from ..config import compose_config
    from ..run.loop import train

    seconds = []
    for k in range(runs):
        cfg = compose_config(run_shape(folder / f"run-{k}", first_seed + k))
        started = time.perf_counter()
        train(cfg)
        seconds.append(time.perf_counter() - started)
    return seconds


def start(runs: int, folder: Path, seed: int, threads: int | None, wait_policy: str | None):
    """A worker process; ``threads`` None: auto (every core)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy
    command = [sys.executable, "-m", "diffsort_reorder.bench.study", str(runs), str(folder),
               str(seed)]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


def case(name: str, workers: int, runs: int, root: Path, threads=None, wait_policy=None) -> dict:
    """Start ``workers`` workers at once; the case's runs a minute and seconds per run."""
    slug = "".join(c if c.isalnum() else "-" for c in name)  # a folder name Hydra reads whole
    procs = [start(runs, root / f"{slug}-{w}", 1000 * w, threads, wait_policy)
             for w in range(workers)]  # fmt: skip
    per_run: list[float] = []
    totals = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"bench study: a worker of {name!r} exited with {proc.returncode}")
        seconds = json.loads(out.strip().splitlines()[-1])
        per_run += seconds
        totals.append(sum(seconds))
    return {
        "case": name,
        "workers": workers,
        "threads_each": threads or cores_available(),
        "wait_policy": wait_policy or os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "runs": len(per_run),
        "s_per_run": round(statistics.median(per_run), 2),
        "runs_per_min": round(60 * len(per_run) / max(totals), 2),
    }


def main(args) -> dict:
    runs, cores = args.repeats, cores_available()
    print(f"# study benchmark: the default study's run shape ({METHOD}), {runs} runs per worker, "
          f"{cores} cores; seconds per run exclude start-up")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        root = Path(tmp)
        rows = [
            case("1 job", 1, runs, root),
            case("2 jobs", 2, runs, root, threads=max(1, cores // 2)),
            case("2 runs side by side", 2, runs, root),
            case("2 runs side by side, spinning", 2, runs, root, wait_policy="ACTIVE"),
        ]
    alone = rows[0]["s_per_run"]
    for row in rows:
        row["vs_1_job_alone"] = round(row["s_per_run"] / alone, 2)
    speedup = rows[1]["runs_per_min"] / rows[0]["runs_per_min"]
    checks = [
        dict(target=f"2 jobs: >= {MIN_SPEEDUP}x the runs a minute of 1",
             measured=f"{speedup:.2f}x", holds=speedup >= MIN_SPEEDUP),
        dict(target=f"2 runs side by side: each <= {MAX_SLOWDOWN}x one alone",
             measured=f"{rows[2]['vs_1_job_alone']:.2f}x",
             holds=rows[2]["vs_1_job_alone"] <= MAX_SLOWDOWN),
    ]  # fmt: skip
    columns = ["case", "workers", "threads_each", "wait_policy", "runs", "s_per_run",
               "runs_per_min", "vs_1_job_alone"]  # fmt: skip
    print_results(rows, columns, checks)
    return {"device": "cpu", "cores": cores, "rows": rows, "checks": checks}


if __name__ == "__main__":  # a worker: RUNS FOLDER FIRST_SEED; prints its runs' seconds as JSON
    print(json.dumps(worker(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))))
