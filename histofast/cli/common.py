"""What several ``histofast`` commands share: expanding SLIDE arguments, the tiling options, and the export
run behind ``tile`` and ``demo``."""
from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from ..errors import HistofastError
from ..export.settings import EXPORT_FORMATS
from ..io.decode import DECODES
from ..io.level import RESAMPLE
from ..specs import TISSUE_RULES, GridSpec

if TYPE_CHECKING:
    from ..export import ExportOptions

# The Python parameters of the tiling options named in histofast's messages; each flag is --name-with-dashes.
TILING_PARAMETERS = ("tile_size", "stride", "level", "mpp", "magnification", "max_white", "tissue", "resample",
                     "quality", "label", "threads", "device", "decode", "format", "processes", "retries")
_HSV_BOUND = re.compile(r"(?<![\w.-])(lower|upper)\[([012])\]=")


class FlagNames(logging.Filter):
    """Messages in the words the user typed: ``tile_size=0`` (a parameter of the Python API) → ``--tile-size 0`` for
    every name in ``names``, and ``lower[2]=300`` → ``--hsv-lower V 300``. Call it on a message, or add it to a
    logging handler to rewrite every log line that handler shows."""

    def __init__(self, names: Iterable[str] = TILING_PARAMETERS) -> None:
        super().__init__()
        self._pattern = re.compile(r"(?<![\w.-])(" + "|".join(sorted(names, key=len, reverse=True)) + r")=")

    def __call__(self, message: str) -> str:
        message = _HSV_BOUND.sub(lambda m: f"--hsv-{m[1]} {'HSV'[int(m[2])]} ", message)
        return self._pattern.sub(lambda m: f"--{m[1].replace('_', '-')} ", message)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self(record.getMessage()), ()
        return True


flag_message = FlagNames()  # the tiling options' messages as flags


def slide_paths(items: Sequence[str]) -> list[str]:
    """The slides SLIDE arguments name: files as given, folders walked recursively (``histofast.export.find_slides``,
    which logs every file a walk skips, with the reason)."""
    from ..export.inputs import find_slides

    return find_slides(items).slides


def add_tiling_arguments(p: argparse.ArgumentParser, fmt: str) -> None:
    """The grid, filter, format and augmentation options of ``tile`` and ``demo`` (the grid's defaults are
    ``GridSpec``'s)."""
    grid = GridSpec()
    p.add_argument("--tile-size", type=int, default=grid.tile_size, metavar="PX",
                   help=f"tile side in pixels (default {grid.tile_size})")
    p.add_argument("--stride", type=int, metavar="PX", help="grid step in pixels (default: the tile size); < tile "
                   "size overlaps")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, help="pyramid level to tile (default 0, full resolution)")
    which.add_argument("--mpp", type=float, help="target µm per pixel: nearest finer level, resampled if >5%% off")
    which.add_argument("--magnification", type=float, metavar="X", help="target magnification, e.g. 20 for 20×")
    p.add_argument("--resample", choices=RESAMPLE, default=grid.resample,
                   help="how --mpp/--magnification between levels are made: triangle, the antialiased filter, or "
                        "dct, a JPEG level decoded at 1/2, 1/4 or 1/8 by libjpeg's DCT scaling (faster; close to the "
                        f"block mean; the triangle filter where it cannot serve) (default {grid.resample})")
    p.add_argument("--max-white", type=float, default=grid.max_white, metavar="F",
                   help=f"keep tiles whose white fraction is at most F (default {grid.max_white})")
    p.add_argument("--tissue", choices=TISSUE_RULES, default=grid.tissue,
                   help="which rule keeps a tile: hsv, the paper's (white fraction at most --max-white), or otsu, "
                        "CLAM's tissue segmentation (Otsu on a low-resolution level's saturation, contours, "
                        f"its four-point test per tile; white ratios still reported) (default {grid.tissue})")
    p.add_argument("--skip-background", action="store_true",
                   help="read a low-resolution level first and decode only where it shows tissue: faster on "
                        "mostly-glass slides, not exact (faint or sparse tissue may be left out; 'histofast "
                        "bench --glass 0.7' measures both)")
    p.add_argument("--hsv-lower", type=int, nargs=3, default=grid.hsv_lower, metavar=("H", "S", "V"),
                   help="OpenCV HSV lower bound of 'white' (default {} {} {})".format(*grid.hsv_lower))
    p.add_argument("--hsv-upper", type=int, nargs=3, default=grid.hsv_upper, metavar=("H", "S", "V"),
                   help="OpenCV HSV upper bound of 'white' (default {} {} {})".format(*grid.hsv_upper))
    p.add_argument("--format", choices=EXPORT_FORMATS, default=fmt,
                   help=f"how to write kept tiles (default {fmt}); tfrecord writes shards + DALI index files; h5 the "
                        "kept tiles' coordinates as CLAM's (OUT/patches/SLIDE.h5) and TRIDENT's "
                        "(OUT/<mag>x_<size>px_<overlap>px_overlap/patches/SLIDE_patches.h5) patch files")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    p.add_argument("--label", type=int, default=-100, help="class label stored in TFRecords (default -100: none)")
    p.add_argument("--augment", metavar="SPEC",
                   help='geometric augmentation of written tiles, e.g. "rot90,flip,shift=16,angle=10"')
    p.add_argument("--seed", type=int, default=0, help="augmentation seed (default 0)")
    p.add_argument("--threads", type=int, metavar="N", help="decode/encode threads (default: all cores)")
    p.add_argument("--workers", type=int, dest="threads", action=_OldThreadsFlag, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", metavar="DEV",
                   help="where tiles are scored and cut: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--decode", choices=DECODES, default="auto",
                   help="what decodes slides: auto (nvImageCodec on the GPU with --device cuda, where installed "
                        "and it reads the file; else the CPU), cpu, gpu, nvimgcodec-cpu (default auto)")
    p.add_argument("--qc", action="store_true", help="write qc.png: thumbnail with kept tiles outlined")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class _OldThreadsFlag(argparse.Action):
    """``--workers N``, 0.x's name of ``--threads N``: still taken for this release, with a note on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print("histofast: --workers is now --threads; --workers goes in the next release", file=sys.stderr)
        setattr(namespace, self.dest, values)


def export_options(args: argparse.Namespace) -> "ExportOptions":
    """The ``ExportOptions`` of ``args``, checked before anything is read or written; a bad value raises a
    ``HistofastError`` naming its flag."""
    from ..augment import Augment
    from ..checks import check_count
    from ..export import ExportOptions

    try:
        if args.threads is not None:
            check_count(args.threads, "threads")
        grid = GridSpec(args.tile_size, args.stride, args.level, args.mpp, args.magnification, tuple(args.hsv_lower),
                        tuple(args.hsv_upper), args.max_white, args.skip_background, args.tissue, args.resample)
        return ExportOptions(grid=grid, format=args.format, quality=args.quality, label=args.label,
                             augment=Augment.parse(args.augment, args.seed))
    except HistofastError as e:
        raise HistofastError(flag_message(str(e))) from None


def export(args: argparse.Namespace, paths: Sequence[str], not_slides: Sequence[tuple[str, str]] = ()) -> int:
    """Export ``paths`` with the tiling options of ``args`` into ``args.out``; print a summary (with ``not_slides``:
    the (file, reason) of each input a folder walk did not take); the exit status."""
    from ..export import export_slides

    options = export_options(args)
    try:
        processes, scheduler = getattr(args, "processes", 1), getattr(args, "scheduler", None)
        where = ""
        if scheduler is None and processes == 1:
            start = time.perf_counter()
            results = export_slides(paths, args.out, options, threads=args.threads, qc=args.qc,
                                    progress=False if args.quiet else None, device=args.device, decode=args.decode)
        else:  # --processes N / --scheduler ADDRESS: one Dask task per slide (histofast.export.cluster)
            from ..export.cluster import (
                connect,
                export_slides_distributed,
                local_cluster,
                require_distributed,
                scheduler_workers,
            )

            require_distributed()  # the message naming the extra, before anything starts
            if not getattr(args, "verbose", False):  # Dask's INFO lines (workers starting, stopping) are noise here
                for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]:
                    logging.getLogger(name).setLevel(logging.WARNING)
            with connect(scheduler) if scheduler else local_cluster(processes) as client:
                nworkers = len(scheduler_workers(client))
                where = f" on {nworkers} Dask workers ({scheduler or 'local processes'})"
                start = time.perf_counter()
                results = export_slides_distributed(
                    paths, args.out, options, client, threads=args.threads, qc=args.qc,
                    progress=False if args.quiet else None, device=args.device, decode=args.decode,
                    retries=args.retries, rows=False)
    except HistofastError as e:  # checked before any slide is read: name the flag, not the parameter
        raise HistofastError(flag_message(str(e))) from None
    seconds = time.perf_counter() - start
    done = [r for r in results if r.status == "done"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"FAILED {r.slide}: {flag_message(r.error or '')}", file=sys.stderr)
    for r in done + skipped:
        if r.kept == 0 and r.warning:
            print(f"warning: {r.slide}: no tiles: {flag_message(r.warning)}", file=sys.stderr)
        elif r.kept == 0 and args.tissue == "otsu":
            print(f"warning: {r.slide}: no tissue tiles (CLAM's segmentation, --tissue otsu, found no tissue contour "
                  f"that keeps one of the {r.total} tiles)", file=sys.stderr)
        elif r.kept == 0:
            print(f"warning: {r.slide}: no tissue tiles (all {r.total} tiles are more than "
                  f"{args.max_white:g} white); try a higher --max-white", file=sys.stderr)
    print_skipped(not_slides)
    kept, total = sum(r.kept for r in done), sum(r.total for r in done)
    undecoded = sum(r.undecoded for r in done)
    decoders = sorted({r.decoder for r in done})
    print(f"{len(done)} slides tiled, {len(skipped)} already done, {len(failed)} failed; "
          f"tiles kept {kept}/{total}"
          + (f" ({undecoded} left undecoded as glass by --skip-background, grid.csv 'skipped')" if undecoded else "")
          + f"; {seconds:.1f} s{where}; {total / max(seconds, 1e-9):,.0f} tiles/s scored, "
          f"{kept / max(seconds, 1e-9):,.0f} kept tiles/s written"
          + (f"; decoded by {', '.join(decoders)}" if decoders else "")
          + f"; manifest {Path(args.out) / 'manifest.csv'}"
          + (f"; skipped {len(not_slides)} input files (listed above)" if not_slides else ""))
    return 1 if failed else 0


def print_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    """The report of the files a folder walk did not take, each with its reason, on stderr."""
    if skipped:
        print(f"skipped {len(skipped)} files:", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
