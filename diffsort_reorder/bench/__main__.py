"""``diffsort-bench {data,estimators,gpu,long,train} [--device ...] [--out results.json]`` (or
``python -m diffsort_reorder.bench``)."""

from __future__ import annotations

import json

import torch

from ..cli import OneLineParser
from ..files import write_text
from . import data, estimators, gpu, long, train

BENCHMARKS = {"data": data, "estimators": estimators, "gpu": gpu, "long": long, "train": train}


def main(argv: list[str] | None = None) -> dict:
    parser = OneLineParser(prog="diffsort-bench", description="Speed and memory benchmarks.")
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", help="comma-separated BxN (default: the benchmark's own)")
    parser.add_argument("--dim", type=int, default=long.DIM, help="token width D (long)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.sizes is None and args.benchmark != "data":  # data: --sizes 1x<images>
        sizes = getattr(BENCHMARKS[args.benchmark], "SIZES", estimators.SIZES)
        args.sizes = ",".join(f"{b}x{n}" for b, n in sizes)
    result = BENCHMARKS[args.benchmark].main(args)
    if args.out:
        write_text(args.out, json.dumps(result, indent=2))
    print(json.dumps({"benchmark": args.benchmark, "checks": result.get("checks", [])}))
    return result


def console() -> None:
    """The ``diffsort-bench`` console script (``main``, returning no value)."""
    main()


if __name__ == "__main__":
    main()
