"""Riding out a database server that went away (a restart, a network fault): a storage call
that fails because its connection did is made again (:func:`patiently`) for up to
``study.reconnect_seconds``, then the worker stops with :class:`StorageLost`, one line that says
to run the same command again. :class:`PatientStorage` is Optuna's RDBStorage doing so."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator

import optuna
import sqlalchemy

from ...redact import redacted

RECONNECT_SECONDS = 120  # study.reconnect_seconds: how long a database that went away is waited for
RETRY_WAITS = (1.0, 10.0)  # seconds between tries: the first, doubling up to the longest
# The connection went away (a restart, a network fault); the driver's error is the cause of
# SQLAlchemy's, which is the cause of Optuna's StorageInternalError.
LOST_CAUSES = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
)
log = logging.getLogger(__name__)


class StorageLost(optuna.exceptions.StorageInternalError):
    """The study's storage did not answer for ``study.reconnect_seconds``: the message is one line
    that says so and to run the same command again. An Optuna StorageInternalError, so whatever
    handles Optuna's handles it."""


def shown(url: str) -> str:
    """``url`` without its password, for messages (one SQLAlchemy cannot parse too)."""
    with contextlib.suppress(Exception):
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    return redacted(url)


def one_line(text: object) -> str:
    """``text`` on one line, without the password of any URL in it (a driver's message may
    quote the URL)."""
    return redacted(" ".join(str(text).split()))


def reason(err: BaseException) -> str:
    """The driver's words for ``err`` (its innermost cause), on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    return one_line(getattr(err, "orig", None) or err)


def is_lost(err: BaseException | None) -> bool:
    """Whether ``err`` means that the connection to the database went away: worth trying again."""
    while err is not None:
        if isinstance(err, LOST_CAUSES) or getattr(err, "connection_invalidated", False):
            return True
        err = err.__cause__
    return False


def lost_message(where: str, err: BaseException, seconds: float | None = None) -> str:
    """One line for a lost storage (``where``: its URL as messages show it)."""
    waited = f"; it did not answer for {seconds:g} s (study.reconnect_seconds)" if seconds else ""
    return (
        f"lost 'study.storage' {where!r} ({reason(err)}){waited}; run the same command again "
        f"to continue"
    )


def patiently(call: Callable, seconds: float, where: str, retry: Callable = is_lost):
    """``call()``, made again while it fails with an error that ``retry`` accepts (the storage
    ``where`` went away), for up to ``seconds``: after 1 s, then waits doubling up to 10 s, with
    one warning (no traceback). Then raises :class:`StorageLost`."""
    started, wait, warned = time.monotonic(), RETRY_WAITS[0], False
    while True:
        try:
            result = call()
        except Exception as err:  # noqa: BLE001  (``retry`` says which)
            waited = time.monotonic() - started
            if warned and isinstance(err, optuna.exceptions.UpdateFinishedTrialError):
                # The attempt whose answer was lost had been applied (a trial's end, say).
                log.warning("the study's storage %s had applied the call cut short", where)
                return True
            if not retry(err):
                raise
            if waited >= seconds:
                raise StorageLost(lost_message(where, err, seconds)) from err
            if not warned:
                log.warning("lost the study's storage %s (%s); retrying for up to %g s",
                            where, reason(err), seconds)  # fmt: skip
            warned = True
            time.sleep(min(wait, seconds - waited))
            wait = min(2 * wait, RETRY_WAITS[1])
            continue
        if warned:
            log.warning("the study's storage %s answers again (after %.0f s)", where,
                        time.monotonic() - started)  # fmt: skip
        return result


_retrying = threading.local()  # .active: a retried storage call runs (the calls inside it do not)


@contextlib.contextmanager
def tried_once() -> Iterator[None]:
    """Storage calls in the block are tried once: their caller tries again on its own."""
    before = getattr(_retrying, "active", False)
    _retrying.active = True
    try:
        yield
    finally:
        _retrying.active = before


def retried(method: Callable) -> Callable:
    """``method`` of a :class:`PatientStorage`, made again (:func:`patiently`) while the database
    does not answer; inside another retried call it is tried once (the outer one retries)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if getattr(_retrying, "active", False):
            return method(self, *args, **kwargs)
        with tried_once():
            return patiently(functools.partial(method, self, *args, **kwargs),
                             self.reconnect_seconds, shown(self.url))  # fmt: skip

    return call


class PatientStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, riding out a database server that went away (a restart): each call
    that fails because its connection did is made again (:func:`retried`) for up to
    ``reconnect_seconds``. Optuna makes each call in a session of its own, rolled back on any
    error, so a call made again starts afresh; the engine checks a pooled connection before use
    (``pool_pre_ping``), so those a restart cut are replaced."""

    def __init__(self, url: str, reconnect_seconds: float, **kwargs) -> None:
        self.reconnect_seconds = reconnect_seconds
        super().__init__(url, **kwargs)


# Every RDBStorage method that reads or writes the database (Optuna's cache calls the private
# ones); the rest (helpers inside a session) must not retry on their own.
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "_create_new_trial",
    "set_trial_param", "_set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials",
    "get_best_trial", "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids",
)  # fmt: skip
for _name in RETRIED:
    setattr(PatientStorage, _name, retried(getattr(optuna.storages.RDBStorage, _name)))
