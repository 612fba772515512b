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
    """Every global generator's state, for a checkpoint: tensors and plain values only, so that
    it loads with torch's weights-only unpickler (numpy's key is a tensor, Python's a list)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    npy = dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
               has_gauss=int(has_gauss), gauss=float(gauss))  # fmt: skip
    version, internal, py_gauss = random.getstate()
    py = {"version": version, "internal": list(internal), "gauss": py_gauss}
    state = {"torch": torch.get_rng_state(), "numpy": npy, "random": py}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (or what it saved before: numpy's and Python's own
    state tuples)."""
    torch.set_rng_state(state["torch"])
    npy, py = state["numpy"], state["random"]
    if isinstance(npy, dict):
        keys = npy["keys"].numpy().astype(np.uint32)
        npy = ("MT19937", keys, npy["pos"], npy["has_gauss"], npy["gauss"])
    if isinstance(py, dict):
        py = (py["version"], tuple(py["internal"]), py["gauss"])
    np.random.set_state(npy)  # noqa: NPY002
    random.setstate(py)
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


def cores_available() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or a scheduler's
    share, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(setting=None, jobs: int = 1) -> int:
    """``trainer.threads``: torch's intra-op CPU threads for a run. A positive integer is taken
    as it is; null (auto) takes ``OMP_NUM_THREADS`` when set (a study's workers get their share
    there), else the cores this process may use divided among ``jobs`` local workers."""
    if setting is not None:
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ValueError(
                f"'trainer.threads' should be a positive integer or null (auto) but got {setting!r}"
            )
        return setting
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return share_of_cores(jobs)


def share_of_cores(jobs: int) -> int:
    """The threads of each of ``jobs`` local workers: the cores this process may use, shared
    (at least one)."""
    return max(1, cores_available() // max(1, jobs))


def use_threads(setting=None, jobs: int = 1) -> int:
    """Set torch's intra-op threads as :func:`choose_threads` says; returns the number."""
    threads = choose_threads(setting, jobs)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def show_progress(setting) -> bool:
    """``progress``: ``auto`` shows bars on a terminal outside CI; true or false force it."""
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(setting)


def progress_lines(setting) -> bool:
    """Whether ``progress`` asks for a plain line per step of work (an epoch) instead of a bar:
    ``auto`` where no bar shows (no terminal, CI), so that a log file still shows the work
    moving; never with true (a bar) or false (quiet)."""
    return setting == "auto" and not show_progress(setting)
