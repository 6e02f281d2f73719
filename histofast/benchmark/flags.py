"""The flags of ``histofast bench`` (also ``benchmarks/tiles_per_second.py``): what it measures by default,
and the argparse options; light to import, so ``histofast --help`` does not load the benchmark itself."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..checks import check_count

PROG = "histofast bench"
HELP = "time the seed's OpenSlide+OpenCV recipe, the JPEG decode limit, tile_grid and iter_tiles on one slide"
DESCRIPTION = """\
End-to-end tiles per second on one slide, every method in one process:
  (a) recipe     the seed's loop: per grid tile OpenSlide read_region, cv2.cvtColor(RGB2HSV), cv2.inRange,
                 mean <= max_white (one thread; a deterministic subset of whole grid rows, see --recipe-tiles)
  (b) decode     the limit: every stored tile of level 0 read with os.pread and decoded with
                 imagecodecs.jpeg8_decode in --threads threads, nothing else
  (c) tile_grid  histofast.tile_grid over the whole level
  (c') skip_background  tile_grid(skip_background=True): a low-resolution level read first, glass not decoded;
                 its keep decisions are compared with (c)'s tile by tile (agreement, and how far the differing
                 tiles' white ratio lies from max_white)
  (c'') resampled  tile_grid(mpp=2 × level 0's): level 0 decoded and resampled to half its resolution (a 20× grid
                 on a 40× slide whose next level is 4× down), timed against (c) on the same level-0 pixels
  (c''') dct     (c'') with resample="dct": level 0 decoded at 1/2 by libjpeg's DCT scaling; its keep decisions and
                 white ratios compared with (c'')'s tile by tile
  (d) iter_tiles histofast.iter_tiles with rot90/flip/shift 16 augmentation, float32 NCHW, normalised, batches of 64
  (d') two_pass  tile_grid, then grid.tiles with the same options (the kept tiles decoded a second time)
Named in --methods only (the generated slide, converted once to a DICOM WSI series of the same JPEG tiles):
  (g) dicom      tile_grid on the DICOM series: its frames read and decoded by histofast's fast path
  (g') dicom-os  tile_grid on the DICOM series read through OpenSlide (backend="openslide")
With --peers, where installed (else reported as skipped), on the recipe's rows with --threads workers:
  (e) cuCIM      cucim.CuImage.read_region batched over the rows' tiles, each tile scored as in (a)
  (f) tiffslide  tiffslide.TiffSlide.read_region per tile, one grid row per thread, scored as in (a)
MP/s is level-0 area per second: a method scoring k of the grid's R rows is credited with k/R of the level's
W*H pixels, whole-level methods with W*H, so at one stride the MP/s ratio equals the tiles/s ratio.
Default slide: histofast.synth.write_slide(SIZE x SIZE, seed=0, tissue_fraction=1 - GLASS), cached in --cache-dir;
the glass fraction reported is measured: the share of tile_grid's tiles not kept.
The table goes to stdout, progress to stderr, everything (with machine and build) to --json."""

TILE_SIZE = 512
DEFAULT_SIZE, QUICK_SIZE = 16384, 4096
DEFAULT_RECIPE_TILES, QUICK_RECIPE_TILES = 1024, 32  # ~10-20 s at the recipe's ~60-100 tiles/s on one core
DEFAULT_REPEATS = 3
DEFAULT_JSON = Path(".benchmarks") / "tiles_per_second.json"  # .benchmarks/ is git-ignored (pytest-benchmark's)
METHODS = ("recipe", "decode", "tile_grid", "skip_background", "resampled", "dct", "iter_tiles", "two_pass")
DEFAULT_GLASS = 0.5  # share of the generated slide's area that is glass (background)
PEERS = ("cucim", "tiffslide")  # other readers, timed with --peers (or named in --methods)
DICOM_METHODS = ("dicom", "dicom_openslide")  # timed when named in --methods
LABELS = {"recipe": "(a) recipe", "decode": "(b) decode", "tile_grid": "(c) tile_grid",
          "skip_background": "(c') skip bg", "resampled": "(c'') mpp x2",
          "dct": "(c''') dct x2",
          "iter_tiles": "(d) iter_tiles", "two_pass": "(d') two_pass", "cucim": "(e) cuCIM",
          "tiffslide": "(f) tiffslide", "dicom": "(g) dicom", "dicom_openslide": "(g') dicom-os"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (the ``histofast bench`` subparser or a standalone one)."""
    src = parser.add_argument_group("slide")
    src.add_argument("--slide", metavar="PATH", help="benchmark this slide file instead of a generated one")
    src.add_argument("--size", type=_positive_int, metavar="PIXELS",
                     help=f"side of the generated square slide (default {DEFAULT_SIZE}; {QUICK_SIZE} with --quick)")
    src.add_argument("--cache-dir", metavar="DIR",
                     help="where generated slides are kept between runs (default $XDG_CACHE_HOME/histofast/bench "
                          "or ~/.cache/histofast/bench; the system temp dir if that is not writable)")
    src.add_argument("--regenerate", action="store_true", help="write the generated slide again even if cached")
    src.add_argument("--glass", type=_fraction, default=DEFAULT_GLASS, metavar="F",
                     help=f"share of the generated slide that is glass, in [0, 1) (default {DEFAULT_GLASS}; e.g. 0.7 "
                          "for a typical 40× scan, where skip_background pays)"),
    how = parser.add_argument_group("measurement")
    how.add_argument("--strides", type=_positive_int, nargs="+", default=[512, 256], metavar="PIXELS",
                     help="grid strides, level-0 pixels (default: 512 256)")
    how.add_argument("--tile-size", type=_positive_int, default=TILE_SIZE, metavar="PIXELS",
                     help=f"grid tile side, level-0 pixels (default {TILE_SIZE})")
    how.add_argument("--repeats", type=_positive_int, metavar="N",
                     help=f"timed runs of every method after one warm-up; median, min and max are reported "
                          f"(default {DEFAULT_REPEATS})")
    how.add_argument("--recipe-tiles", type=_tiles, metavar="N|all",
                     help=f"grid tiles the recipe scores per run, as whole grid rows spread evenly over the level "
                          f"(default {DEFAULT_RECIPE_TILES}, {QUICK_RECIPE_TILES} with --quick; 'all': every row)")
    how.add_argument("--threads", type=_positive_int, metavar="N",
                     help=f"decode threads for histofast and the decode limit (default: os.cpu_count(), "
                          f"{os.cpu_count()} here)")
    how.add_argument("--methods", type=_methods, default=list(METHODS), metavar="LIST",
                     help=f"comma-separated subset of {','.join(METHODS + PEERS + DICOM_METHODS)} "
                          f"(default: {','.join(METHODS)})")
    how.add_argument("--peers", action="store_true",
                     help=f"also time the peers {' and '.join(PEERS)} where installed (a missing one is "
                          f"reported as skipped) on the recipe's rows, scored by the recipe's rule")
    how.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                     help="before each timed run, wait up to SECONDS for other processes to use less than a "
                          "quarter of a core (shared machines; default 0: do not wait)")
    how.add_argument("--quick", action="store_true",
                     help=f"smoke test in seconds: a {QUICK_SIZE}² slide, {QUICK_RECIPE_TILES} recipe tiles")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", default=str(DEFAULT_JSON),
                     help=f"write results, machine and build here (default {DEFAULT_JSON}, relative to the "
                          f"current directory); '-' for stdout instead of the table")
    out.add_argument("--no-json", action="store_true", help="write no JSON file")
    out.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The standalone parser of ``benchmarks/tiles_per_second.py``."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def _positive_int(text: str) -> int:
    try:
        return check_count(int(text), "value")
    except ValueError:  # not an integer, or not positive (a HistofastError is a ValueError)
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction in [0, 1)")
    return value


def _tiles(text: str) -> int | str:
    return "all" if text == "all" else _positive_int(text)


def _methods(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS + PEERS + DICOM_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of "
                                         f"{','.join(METHODS + PEERS + DICOM_METHODS)}")
    return list(dict.fromkeys(names))
