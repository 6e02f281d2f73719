"""``histofast tile``: export the tissue tiles of slides as files or TFRecord shards, with manifests."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import add_tiling_arguments, export, slide_paths


def add_parser(commands: Any) -> None:
    tile = commands.add_parser(
        "tile", help="export the tissue tiles of slides (JPEG/PNG files or TFRecord shards) with a manifest",
        description="Tile slides on a grid, keep tiles whose HSV white fraction is at most --max-white, and write "
        "them under OUT/<slide>/ with OUT/<slide>/manifest.csv and OUT/manifest.csv. Reruns skip finished "
        "slides and complete interrupted ones; a failing slide is reported and the others still finish "
        "(exit status 1).",
    )
    tile.add_argument("slides", nargs="+", metavar="SLIDE", help="slide or image files, or folders of them")
    tile.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_tiling_arguments(tile, stride=None, fmt="jpg")
    tile.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    paths = slide_paths(args.slides)
    if not paths:
        print(f"histofast tile: no slide files in {' '.join(args.slides)}", file=sys.stderr)
        return 2
    return export(args, paths)
