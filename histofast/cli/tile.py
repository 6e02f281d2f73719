"""``histofast tile``: export the tissue tiles of slides as files or TFRecord shards, with manifests."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import add_tiling_arguments, export, export_options, print_skipped


def add_parser(commands: Any) -> None:
    tile = commands.add_parser(
        "tile", help="export the tissue tiles of slides (JPEG/PNG files or TFRecord shards) with a manifest",
        description="Tile slides on a grid, keep tiles whose HSV white fraction is at most --max-white, and write "
        "them under OUT/<slide>/ with OUT/<slide>/manifest.csv and OUT/manifest.csv (every finished slide in OUT). "
        "Folders are walked recursively: every file named like a slide or image (.svs .tif .tiff .ndpi .scn .bif "
        ".svslide .mrxs .vms .vmu .dcm .png .jpg .jpeg) is one slide; a DICOM series (its .dcm files, grouped by "
        "SeriesInstanceUID), a .mrxs with its data folder, a .vms/.vmu with its side files are one slide each; every "
        "other file is listed as skipped with the reason. A slide's folder is its file stem (with the parent folder's "
        "name and/or the suffix when stems collide) and is tied to its source file: a folder made from another file "
        "is refused. Reruns skip finished slides and complete interrupted ones; a failing slide, or one another run "
        "is exporting into OUT, is reported and the others still finish (exit status 1).",
    )
    tile.add_argument("slides", nargs="+", metavar="SLIDE",
                      help="slide or image files, or folders of them (walked recursively, at any depth)")
    tile.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_tiling_arguments(tile, fmt="jpg")
    where = tile.add_mutually_exclusive_group()
    where.add_argument("--processes", type=int, default=1, metavar="N",
                       help="tile in N local worker processes (a Dask LocalCluster on 127.0.0.1, the 'cluster' "
                            "extra); each gets cores/N threads unless --threads says (default 1: this process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="send the slides to a running Dask cluster, e.g. tcp://host:8786 or tls://host:8786 "
                            "(certificates from the Dask config); SLIDE paths and --out must be on storage the "
                            "workers share. A Dask cluster runs pickled code: keep it reachable by its users only")
    tile.add_argument("--retries", type=int, default=2, metavar="K",
                      help="with --processes/--scheduler: rerun a slide's task up to K times after an unexpected "
                           "error (default 2; tasks of a worker that died are rerun anyway)")
    tile.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the options, find the slides (nothing is created when an input is missing or none is a slide),
    export them; the exit status."""
    from ..export.inputs import find_slides

    export_options(args)  # bad flags stop here, before anything is read or written
    found = find_slides(args.slides, exclude=[args.out])
    if not found.slides:
        print_skipped(found.skipped)
        print(f"histofast tile: no slide files in {' '.join(args.slides)}", file=sys.stderr)
        return 2
    return export(args, found.slides, found.skipped)
