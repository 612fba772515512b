"""``python -m diffsort_reorder.priors prior=compression_prior data=digits`` (or
``prior=collapse_prior``): compute a prior on a dataset's training images, print its table and
the order over the grid, write ``order.json`` and ``order.png``, and end with one JSON line of the
result. Each stage (reading the images, computing, writing) says so on stderr as it starts, so that
a log without a terminal shows the command moving."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from ...checks import check_choice, check_complete, check_int, check_writable
from ...cli import bad_input, run_command
from ...config import compose_config
from ...data import create_dataset, grid_shape
from ...files import write_text
from ...plotting import save_orders_png
from . import PRIORS, prior_images


def rank_grid(order, grid: tuple[int, int]) -> str:
    """Each patch's slot in the order, laid out on the grid."""
    slot = [0] * (grid[0] * grid[1])
    for k, patch in enumerate(order.tolist()):
        slot[patch] = k
    width = len(str(len(slot) - 1))
    rows = [
        " ".join(f"{slot[r * grid[1] + c]:>{width}}" for c in range(grid[1]))
        for r in range(grid[0])
    ]
    return "\n".join(rows)


def stage(name: str, text: str) -> None:
    """One line on stderr as a stage starts or ends."""
    print(f"diffsort-priors {name}: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict | None:
    """``diffsort-priors prior=<name> data=<name> [key=value ...]``: compute one prior."""
    summary = "Compute a prior's patch order on a dataset's training images and draw it."
    compose = functools.partial(compose_config, config_name="priors")
    cfg = run_command("diffsort-priors", summary, "priors", compose, argv)
    if cfg is None:
        return None
    name, patch_size = cfg.prior.name, cfg.data.patch_size
    with bad_input():
        check_complete(cfg)
        check_choice("prior.name", name, list(PRIORS))  # it names the output folder too
        check_int("seed", cfg.seed)
        check_int("data.patch_size", patch_size, 1)
        settings = OmegaConf.to_container(cfg.prior.options, resolve=True)
        max_images = check_int("prior.options.max_images", settings.pop("max_images"), 1)
        check_writable("output_dir", cfg.output_dir)  # before the work, not once it is done
        stage(name, f"reading up to {max_images} training images of {cfg.data.name}")
        train_set, _ = create_dataset(
            cfg.data.name, **OmegaConf.to_container(cfg.data.options, resolve=True)
        )
        images = prior_images(train_set, max_images, cfg.seed)
        grid = grid_shape(images.shape[2], images.shape[3], patch_size)
        stage(name, f"computing it on {len(images)} images, {grid[0]}x{grid[1]} patches")
        started = time.perf_counter()
        prior = PRIORS[name](images, patch_size, **settings)
        seconds = time.perf_counter() - started
    stage(name, f"computed in {seconds:.1f} s; writing {cfg.output_dir}")

    print(f"# {name} on {cfg.data.name}: {len(images)} images, {grid[0]}x{grid[1]} patches")
    print(prior.table() if name == "compression_prior" else prior.table(grid))
    print("slot of each patch in the order:")
    print(rank_grid(prior.order, grid))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "prior": name,
        "data": cfg.data.name,
        "grid": list(grid),
        "order": prior.order.tolist(),
        "seconds": round(seconds, 2),
        "output_dir": str(out),
    }
    if name == "compression_prior":
        result.update(order_name=prior.order_name, scores=prior.scores)
    else:
        result.update(pagerank=[round(v, 5) for v in prior.pagerank.tolist()])
    write_text(out / "order.json", json.dumps(result, indent=1) + "\n")
    save_orders_png({f"{name} ({cfg.data.name})": prior.order}, *grid, out / "order.png")
    print(json.dumps(result))
    return result


def console() -> None:
    """The ``diffsort-priors`` console script (``main``, returning no value)."""
    main()
