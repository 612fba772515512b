"""Registries by name, and the estimator registry: ``register_estimator``, ``create_estimator``,
``list_estimators``.

:class:`Registry` is the one registry every kind of named thing uses (here the estimators; in the
suite the backbones, scan orders, datasets and priors): a decorator to register, a lookup that
names what exists when a name is unknown, and a read-only mapping.

Every estimator is built as ``create_estimator(name, num_tokens, **hparams)``. The few that need
more than ``num_tokens`` say so in their class attribute ``extra_required`` (``saliency``: the
token width ``dim``), and ``create_estimator`` names what is missing or unknown.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class Registry(Mapping):
    """Objects (classes or factories) of one ``kind`` by name.

    ``register(name)`` decorates (or ``register(name, obj)`` registers) and warns when it replaces
    another object; ``lookup(name)`` raises ``ValueError("unknown <kind> 'x'; available <plural>:
    a, b")`` for an unknown name; ``create(name, **kwargs)`` calls the registered object with the
    ``None`` kwargs dropped (a config's ``null`` means the default); ``names()`` lists the names
    sorted. As a mapping, ``registry[name]``, ``name in registry`` and ``list(registry)`` work as
    on a dict, in registration order. ``set_name``: give each registered object a ``name``
    attribute, its registered name.
    """

    def __init__(self, kind: str, plural: str | None = None, *, set_name: bool = False) -> None:
        self.kind, self.plural = kind, plural or f"{kind}s"
        self.set_name = set_name
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Any:
        """``@registry.register(name)`` on a class or function, or ``registry.register(name,
        obj)``; returns what it registered (the decorator when ``obj`` is None)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"'name' should be a non-empty str but got {name!r}")
        if obj is not None:
            return self._add(name, obj)
        return lambda target: self._add(name, target)

    def _add(self, name: str, obj: Any) -> Any:
        old = self._entries.get(name)
        if old is not None and old is not obj:
            warnings.warn(
                f"{self.kind} {name!r} is already registered ({_label(old)}); {_label(obj)} "
                f"replaces it",
                UserWarning,
                stacklevel=3,  # where the decorator or register(name, obj) was called
            )
        self._entries[name] = obj
        if self.set_name:
            obj.name = name
        return obj

    def lookup(self, name: str) -> Any:
        """The object registered as ``name``, or a ValueError naming the registered ones."""
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available {self.plural}: {', '.join(self.names())}"
            )
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``lookup(name)(*args, **kwargs)`` with the ``None`` kwargs dropped."""
        return self.lookup(name)(*args, **{k: v for k, v in kwargs.items() if v is not None})

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def copy(self) -> Registry:
        """A registry of the same kind holding the same entries (a test's scratch copy)."""
        other = Registry(self.kind, self.plural, set_name=self.set_name)
        other._entries = dict(self._entries)
        return other

    def __getitem__(self, name: str) -> Any:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _label(obj: Any) -> str:
    return getattr(obj, "__qualname__", repr(obj))


ESTIMATORS = Registry("estimator", set_name=True)


def register_estimator(name: str) -> Callable[[type], type]:
    """Class decorator: register an estimator class under ``name`` (warns when it replaces one)."""
    return ESTIMATORS.register(name)


def list_estimators() -> list[str]:
    """The registered estimator names, sorted."""
    return ESTIMATORS.names()


def _accepted_hparams(cls: type) -> list[str]:
    """The keyword arguments ``cls`` takes besides ``num_tokens``, sorted."""
    params = inspect.signature(cls).parameters.values()
    return sorted(p.name for p in params if p.name != "num_tokens" and p.kind != p.VAR_KEYWORD)


def create_estimator(name: str, num_tokens: int, **hparams):
    """Build estimator ``name`` for ``num_tokens`` tokens; ``None`` hparams mean the default.

    Raises ValueError for an unknown name or a missing ``extra_required`` argument, and TypeError
    for an hparam the estimator does not take (listing those it takes).
    """
    cls = ESTIMATORS.lookup(name)
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
