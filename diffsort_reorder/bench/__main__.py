"""``diffsort-bench {data,estimators,gpu,long,study,train} [--device ...] [--out results.json]`` (or
``python -m diffsort_reorder.bench``)."""

from __future__ import annotations

import argparse
import json
import re

import torch

from ..checks import check_writable
from ..cli import OneLineParser
from ..files import write_text
from . import data, estimators, gpu, long, study, train

BENCHMARKS = {
    "data": data, "estimators": estimators, "gpu": gpu, "long": long, "study": study, "train": train
}  # fmt: skip
SIZE = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")


def sizes_arg(text: str) -> str:
    """``--sizes``: comma-separated ``BxN`` with whole numbers >= 1."""
    bad = [size for size in text.split(",") if not SIZE.fullmatch(size.strip())]
    if bad:
        raise argparse.ArgumentTypeError(
            f"got {text!r}, whose {bad[0]!r} is not BxN; accepted: comma-separated BxN with "
            f"whole numbers >= 1, e.g. 32x196,8x1024"
        )
    return text.replace(" ", "")


def positive_int(text: str) -> int:
    """A whole number >= 1 (``--repeats``, ``--dim``)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; accepted: a whole number >= 1")
    return int(text)


def device_arg(text: str) -> str:
    """``--device``: cpu, or cuda / cuda:<i> where torch sees a CUDA device."""
    try:
        kind = torch.device(text).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"got {text!r}; accepted: cpu, cuda, cuda:<index>")
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"got {text!r}, but torch sees no CUDA device here; accepted: cpu"
        )
    return text


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, every value checked before any benchmark runs (a bad one: one line,
    exit status 2)."""
    parser = OneLineParser(prog="diffsort-bench", description="Speed and memory benchmarks.")
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument(
        "--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--sizes", type=sizes_arg, help="comma-separated BxN (default: the benchmark's own)"
    )
    parser.add_argument("--dim", type=positive_int, default=long.DIM, help="token width D (long)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.out is not None:
        try:
            check_writable("--out", args.out, file=True)
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
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
