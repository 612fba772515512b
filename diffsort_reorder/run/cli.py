"""``diffsort-train`` / ``python -m diffsort_reorder.train``: one run from the command line."""

from __future__ import annotations

import json

from ..cli import bad_input, run_command
from ..config import compose_config
from .build import prepare_run
from .checks import check_config, check_outputs
from .distributed import World, close
from .loop import train
from .result import RunResult
from .rundir import RefusedCheckpoint


def main(argv: list[str] | None = None) -> RunResult | None:
    """``diffsort-train [key=value ...]``: train one run, print its result as one JSON line."""
    summary = "Train one run (data, backbone, method, trainer) and print its result as JSON."
    cfg = run_command("diffsort-train", summary, "config", compose_config, argv)
    if cfg is None:
        return None
    with bad_input():  # the config's values (before seeding reads seed=), then what it names
        world = World.from_env()
        check_config(cfg, world.size)
        check_outputs(cfg)  # before the work, not once it is done
        run = prepare_run(cfg)
    with bad_input((RefusedCheckpoint,)):  # another config's checkpoint, or a crafted one
        result = train(cfg, run=run)
    close()
    if world.is_main:
        print(json.dumps(result.to_json()))
    return result


def console() -> None:
    """The ``diffsort-train`` console script (``main``, returning no value)."""
    main()
