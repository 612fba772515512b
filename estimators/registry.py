"""The estimator registry: ``register_estimator``, ``create_estimator``, ``list_estimators``."""

from __future__ import annotations

ESTIMATORS: dict[str, type] = {}


def register_estimator(name: str):
    def decorator(cls: type) -> type:
        ESTIMATORS[name] = cls
        cls.name = name
        return cls

    return decorator


def list_estimators() -> list[str]:
    return sorted(ESTIMATORS)


def create_estimator(name: str, num_tokens: int, **hparams):
    """Build estimator ``name`` for ``num_tokens`` tokens; ``None`` hparams mean the default."""
    if name not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {name!r}; available estimators: {', '.join(list_estimators())}"
        )
    return ESTIMATORS[name](num_tokens, **{k: v for k, v in hparams.items() if v is not None})
