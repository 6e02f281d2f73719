"""The ``histofast`` command: ``tile`` exports tissue tiles of slides, ``demo`` runs it on a generated slide,
``bench`` measures tiles per second against the naive recipe and the decode limit, ``train`` and ``evaluate``
fit and score the models. One module per command; each imports what it needs only when it runs."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import bench, demo, evaluate, tile, train

COMMANDS = (tile, demo, bench, train, evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The ``histofast`` parser with every command's subparser."""
    parser = argparse.ArgumentParser(
        prog="histofast",
        description="Whole-slide images to tissue tiles, fast: OpenCV-exact background filtering, direct "
        "tiled-TIFF decoding, geometric augmentation in C++/CUDA.",
        epilog="Run 'histofast COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from ..errors import HistofastError

    try:
        return args.run(args)
    except HistofastError as e:
        print(f"histofast {args.command}: {e}", file=sys.stderr)
        return 2
