"""Searching one method's space with Optuna, shared by any number of workers.

A worker takes its next trial under the search's lock (see :mod:`.storage`): it pops a waiting trial
(the defaults, or the retry of an interrupted one) or, while fewer than ``n_trials`` count, starts
a new one, so every learned method gets exactly ``n_trials`` trials however many workers share
it. The trial's heartbeat starts, and the trial is marked as beating, before the lock is let go:
a worker killed at any point leaves a trial that goes stale, or (killed before its first beat) an
unmarked one the next worker to hold the lock knows has no worker; either is failed and run again.
A new trial is sampled only once every earlier one has ended (:func:`take_trial`), so a search is
the one a single worker runs, whatever the number of workers: they run different searches side by
side instead (:func:`search_step` answers BUSY, and the study moves on to other work).
A trial is stale when Optuna's heartbeat protocol says so: a database's heartbeats stopped, or a
journal file's trial lock is free (see :mod:`.storage.files`); the next worker to hold the lock
fails it there, where no worker is between taking a trial and proving it alive.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import time
import warnings
from collections.abc import Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .storage import quiet_experimental

# The run's own failures: a non-finite loss or gradient, out of memory, a config the run refuses
# (a plain ValueError, as its checks raise). They end one trial (FAIL, with the reason: final)
# and the study goes on; a seed run they end is recorded as failed. Anything else (a lost
# storage, a full disk, a corrupt file, Ctrl-C) leaves the trial to be run again.
TRIAL_ERRORS = (FloatingPointError, torch.OutOfMemoryError, ValueError)


def is_final(err: BaseException) -> bool:
    """Whether ``err`` is the run's own failure (:data:`TRIAL_ERRORS`): any FloatingPointError
    (the estimators' NonFiniteError too) or out-of-memory error, and a ValueError only exactly,
    as a config check raises it: its subclasses (a corrupt JSON file, a damaged or unsafe
    checkpoint) are faults of the machine's files, not of the run."""
    if isinstance(err, (FloatingPointError, torch.OutOfMemoryError)):
        return True
    return type(err) is ValueError


POLL_SECONDS = 5.0  # how often a worker waiting for others' trials looks again
BEATING = "beating"  # a trial's system attribute: its heartbeat has started


def pause() -> None:
    """Wait :data:`POLL_SECONDS` before looking again at work other workers hold."""
    time.sleep(POLL_SECONDS)


def is_interrupted(trial: FrozenTrial) -> bool:
    """A trial that failed without our ``fail_reason`` (Ctrl-C, a killed worker): run again."""
    return trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Finished, failed (with a reason), running and waiting trials count; an interrupted one
    does not: it is run again."""
    return not is_interrupted(trial)


def requeue_interrupted(study: optuna.Study) -> None:
    """Enqueue the parameters of each interrupted trial (the latest of its retries) once."""
    latest: dict[int, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        latest[trial.user_attrs.get("retry_of", trial.number)] = trial  # in trial order
    for root, trial in latest.items():
        if is_interrupted(trial):
            study.enqueue_trial(trial.params, user_attrs={"retry_of": root})


def describe(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"val {trial.value:.3f}"
    if trial.state == TrialState.PRUNED:
        return f"pruned at epoch {trial.last_step}"
    return f"{trial.state.name} ({trial.user_attrs.get('fail_reason', 'interrupted')})"


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose worker is dead, where the storage can tell (Optuna's
    heartbeats: a database's, a journal file's trial locks); call it under the search's lock."""
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)


def fail_unmarked_trials(study: optuna.Study, grace_period: float) -> None:
    """Fail the RUNNING trials taken over ``grace_period`` seconds ago and never marked as
    beating; call it under the search's lock. A worker marks its trial moments after taking it,
    under that lock, so such a trial's worker died in between, and Optuna never fails a RUNNING
    trial that has no heartbeat at all. (The grace spares a trial taken while the lock was not
    held: one machine's file lock on a shared database, a lost connection.)"""
    now = datetime.datetime.now()  # as Optuna dates a trial's start
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if BEATING in trial.system_attrs or trial.datetime_start is None:
            continue
        if (now - trial.datetime_start).total_seconds() > grace_period:
            finished = optuna.exceptions.UpdateFinishedTrialError  # another worker failed it
            with contextlib.suppress(finished):
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


BUSY = "busy"  # take_trial: no trial to take now, though the search is not done


def take_trial(
    study: optuna.Study, n_trials: int, sampler: Callable, grace_period: float
) -> optuna.Trial | str | None:
    """The trial this worker runs next; None when the budget is spent and no trial runs;
    :data:`BUSY` while other workers' trials run and no waiting trial is left (the next trial,
    or the best one, waits for them). Call it under the search's lock.
    ``sampler(n)`` is the sampler to use with ``n`` trials in the storage.

    A new trial is sampled only once every earlier one has ended, so that it reads the same
    history (and the pruner the same trials) whatever the number of workers: the search is the
    one a single worker runs. A waiting trial (the defaults, a retry) has its parameters already
    and is taken at once. Workers run different methods' searches side by side instead."""
    fail_stale_trials(study)  # a killed worker's trial is FAIL now, and run again below
    fail_unmarked_trials(study, grace_period)
    requeue_interrupted(study)
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.WAITING for t in trials):
        if any(t.state == TrialState.RUNNING for t in trials):
            return BUSY  # the next to sample, or the best, waits for them (one snapshot)
        if sum(map(counts_toward_budget, trials)) >= n_trials:
            return None
    # A sampler seeded by the history, so a resumed study does not redraw its points.
    study.sampler = sampler(len(trials))
    with warnings.catch_warnings():  # Optuna: heartbeats outside optimize() (we beat: storage)
        warnings.filterwarnings("ignore", "Heartbeat", UserWarning)
        return study.ask()  # a waiting trial first, else a new one


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable) -> FrozenTrial:
    """Run ``objective`` on ``trial`` and tell the study how it ended (as ``optimize`` would):
    PRUNED, FAIL for the run's own failures (:func:`is_final`: the study goes on), else FAIL
    and the error raised. A trial another worker failed meanwhile (this worker's storage was
    out of reach for longer than the grace period, so it was run again) keeps that state."""
    tell = functools.partial(study.tell, trial, skip_if_finished=True)
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return tell(state=TrialState.PRUNED)
    except BaseException as err:
        state = tell(state=TrialState.FAIL)
        if is_final(err):
            return state
        raise  # interrupted (FAIL without a reason): it is run again
    return tell(value)


RAN, DONE = "ran", "done"  # search_step's other answers (and BUSY)


def search_step(
    study: optuna.Study,
    objective: Callable,
    *,
    n_trials: int,
    lock: Callable,
    sampler: Callable,
    first_point: Callable[[], dict] | None,
    heartbeat: Callable | None,
    grace_period: float,
    tick: Callable[[FrozenTrial, float], None],
) -> str:
    """Run one trial of ``study`` if this worker may take one now (:data:`RAN`); else
    :data:`BUSY` (other workers' trials run: the next to sample, or the best, waits for them)
    or :data:`DONE` (``n_trials`` counted and none running: every worker sees the same trials).

    ``lock()`` is the search's lock; ``first_point()`` the parameters of the first trial (None:
    sampled); ``heartbeat(trial_id)`` a context that beats for a trial (None: the storage beats
    itself, or keeps no heartbeats); ``grace_period``: seconds after which a trial taken and never
    marked as beating is failed (:func:`fail_unmarked_trials`); ``tick(trial, seconds)`` is told
    of each trial this worker ran."""
    with contextlib.ExitStack() as beating:
        with lock():
            if first_point is not None and not study.get_trials(deepcopy=False):
                study.enqueue_trial(first_point())
            trial = take_trial(study, n_trials, sampler, grace_period)
            if isinstance(trial, optuna.Trial):
                try:
                    if heartbeat is not None:
                        beating.enter_context(heartbeat(trial._trial_id))
                    study._storage.set_trial_system_attr(trial._trial_id, BEATING, True)
                except BaseException:
                    study.tell(trial, state=TrialState.FAIL)  # interrupted: run again
                    raise
        if isinstance(trial, optuna.Trial):
            started = time.perf_counter()
            tick(run_trial(study, trial, objective), time.perf_counter() - started)
            return RAN
    return BUSY if trial == BUSY else DONE
