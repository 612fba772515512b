"""What a run needs from its surroundings: random state, the device, the code version, progress.

Small helpers the loop, the study and the benchmarks share; none of them knows about training.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from .. import __version__


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (libraries may draw from numpy's global RNG)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global generator's state, for a checkpoint."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def code_version() -> str:
    """The git commit of the code that ran (``+dirty`` with local changes); an installed package
    outside a checkout gives its version."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # installed: the enclosing repository is not ours
        return __version__
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return f"{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return __version__


def resolve_device(name: str) -> torch.device:
    """``trainer.device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "'trainer.device' is 'cuda' but no CUDA device is available; use auto or cpu"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"'trainer.device' should be auto, cpu or cuda but got {name!r}")
    return torch.device(name)


def use_amp(setting, device: torch.device) -> bool:
    """``trainer.amp``: ``auto`` (bf16 on CUDA, off on CPU), ``true`` (bf16 on either) or false."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"'trainer.amp' should be auto, true or false but got {setting!r}")


def show_progress(setting) -> bool:
    """``progress``: ``auto`` shows bars on a terminal outside CI; true or false force it."""
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(setting)
