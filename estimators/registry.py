"""The estimator registry: ``register_estimator``, ``create_estimator``, ``list_estimators``.

Every estimator is built as ``create_estimator(name, num_tokens, **hparams)``. The few that need
more than ``num_tokens`` say so in their class attribute ``extra_required`` (``saliency``: the
token width ``dim``), and ``create_estimator`` names what is missing or unknown.
"""

from __future__ import annotations

import difflib
import inspect
import warnings

ESTIMATORS: dict[str, type] = {}


def register_estimator(name: str):
    """Class decorator: register an estimator class under ``name`` (warns when it replaces one)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"'name' should be a non-empty str but got {name!r}")

    def decorator(cls: type) -> type:
        if name in ESTIMATORS and ESTIMATORS[name] is not cls:
            warnings.warn(
                f"estimator {name!r} is already registered ({ESTIMATORS[name].__qualname__}); "
                f"{cls.__qualname__} replaces it",
                UserWarning,
                stacklevel=2,
            )
        ESTIMATORS[name] = cls
        cls.name = name
        return cls

    return decorator


def list_estimators() -> list[str]:
    """The registered estimator names, sorted."""
    return sorted(ESTIMATORS)


def _accepted_hparams(cls: type) -> list[str]:
    """The keyword arguments ``cls`` takes besides ``num_tokens``, sorted."""
    params = inspect.signature(cls).parameters.values()
    return sorted(p.name for p in params if p.name != "num_tokens" and p.kind != p.VAR_KEYWORD)


def _lookup(name: str) -> type:
    if name not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {name!r}; available estimators: {', '.join(list_estimators())}"
        )
    return ESTIMATORS[name]


def create_estimator(name: str, num_tokens: int, **hparams):
    """Build estimator ``name`` for ``num_tokens`` tokens; ``None`` hparams mean the default.

    Raises ValueError for an unknown name or a missing ``extra_required`` argument, and TypeError
    for an hparam the estimator does not take (listing those it takes).
    """
    cls = _lookup(name)
    hparams = {k: v for k, v in hparams.items() if v is not None}
    extra = getattr(cls, "extra_required", {})
    missing = [k for k in extra if k not in hparams]
    if missing:
        needs = ", ".join(f"{k}=<{extra[k]}>" for k in missing)
        example = ", ".join(f"{k}=..." for k in missing)
        raise ValueError(
            f"estimator {name!r} also needs {needs}: "
            f"create_estimator({name!r}, num_tokens=N, {example})"
        )
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        accepted = _accepted_hparams(cls)
        unknown = sorted(set(hparams) - set(accepted))
        if unknown:
            hints = [
                f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k)
                for k in unknown
                for close in [difflib.get_close_matches(k, accepted, n=1, cutoff=0.65)]
            ]
            raise TypeError(
                f"estimator {name!r} got unknown hparam(s) {', '.join(hints)}; it accepts: "
                f"{', '.join(accepted)}"
            )
    return cls(num_tokens, **hparams)
