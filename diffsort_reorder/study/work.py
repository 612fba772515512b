"""The seed runs a worker takes on, between and after the searches: one at a time, whichever no
other worker holds, so that local workers and workers on a cluster keep busy (see
:meth:`.study.Study.work`)."""

from __future__ import annotations

from ..orders.methods import learns_one_order
from ..run.result import RunResult
from .search import pause
from .seeds import SeedJob, retrain_job


def seed_step(study, jobs: dict[tuple[str, str], list[SeedJob]]) -> bool:
    """Train one seed run of ``jobs`` on ``study`` (a :class:`.study.Study`) that no worker holds
    or has recorded: a curriculum run, or a retrain whose curriculum run is known. Whether it
    trained one."""
    done = study.runs_done  # each run trained here ticks
    for js in jobs.values():
        for job in js:
            result = study.seed_run(job, wait=False)
            if study.runs_done > done:
                return True
            if "retrain" in study.protocols:
                study.seed_run(retrain_job(job, result), wait=False)
                if study.runs_done > done:
                    return True
    return False


def collect(study, jobs: dict[tuple[str, str], list[SeedJob]]) -> tuple[dict, dict]:
    """Every seed run's result per (protocol, backbone, method), and the runs whose orders they
    used. Passes over all of them until each is known: a run no worker holds is trained here at
    once (one a killed worker left), and one another worker is training is looked at again on
    the next pass, so that no worker sits waiting for one run while another is free to train."""
    while True:
        results: dict[tuple[str, str, str], list[RunResult | None]] = {}
        sources: dict[tuple[str, str, str], list[str]] = {}
        for (backbone, method), js in jobs.items():
            curriculum = [study.seed_run(job, wait=False) for job in js]
            for protocol in study.protocols:
                runs = curriculum
                if protocol == "retrain" and learns_one_order(method):
                    runs = [study.seed_run(retrain_job(j, r), wait=False)
                            for j, r in zip(js, curriculum, strict=True)]  # fmt: skip
                results[protocol, backbone, method] = runs
                sources[protocol, backbone, method] = [j.key for j in js]  # whose order
        if all(r is not None for runs in results.values() for r in runs):
            return results, sources
        pause()
