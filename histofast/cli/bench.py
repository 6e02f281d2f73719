"""``histofast bench``: tiles per second of the seed's recipe, the decode limit, ``tile_grid`` and ``iter_tiles``
(and with ``--peers`` cuCIM and tiffslide) on one slide, in one process. The benchmark itself
(``histofast.benchmark``) is imported only when it runs."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from ..benchmark.flags import DESCRIPTION, HELP, add_arguments, build_parser


def add_parser(commands: Any) -> None:
    bench = commands.add_parser("bench", help=HELP, description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(bench)
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark.tiles_per_second import run as run_benchmark

    return run_benchmark(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``histofast bench`` as a function (``benchmarks/tiles_per_second.py``): parse ``argv`` and run."""
    return run(build_parser().parse_args(argv))
