"""End-to-end tiles per second (histofast bench, benchmarks/tiles_per_second.py): the seed's OpenSlide + OpenCV
recipe, the JPEG decode limit, tile_grid and iter_tiles on one slide, all timed in one process, ratios from one run."""
from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .io.tiff import TILES_PER_JOB
from .ops import DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER

PROG = "histofast bench"
HELP = "time the seed's OpenSlide+OpenCV recipe, the JPEG decode limit, tile_grid and iter_tiles on one slide"
DESCRIPTION = """\
End-to-end tiles per second on one slide, every method in one process:
  (a) recipe     the seed's loop: per grid tile OpenSlide read_region, cv2.cvtColor(RGB2HSV), cv2.inRange,
                 mean <= max_white (one thread; a deterministic subset of whole grid rows, see --recipe-tiles)
  (b) decode     the limit: every stored tile of level 0 read with os.pread and decoded with
                 imagecodecs.jpeg8_decode in --threads threads, nothing else
  (c) tile_grid  histofast.tile_grid over the whole level
  (d) iter_tiles histofast.iter_tiles with rot90/flip/shift 16 augmentation, float32 NCHW, normalised, batches of 64
  (d') two_pass  tile_grid, then grid.tiles with the same options (the kept tiles decoded a second time)
MP/s is level-0 area per second: a method scoring k of the grid's R rows is credited with k/R of the level's
W*H pixels, whole-level methods with W*H, so at one stride the MP/s ratio equals the tiles/s ratio.
Default slide: histofast.synth.write_slide(SIZE x SIZE, seed=0, tissue_fraction=0.5), cached in --cache-dir.
The table goes to stdout, progress to stderr, everything (with machine and build) to --json."""

TILE_SIZE = 512
MAX_WHITE = 0.5
HSV_LOWER, HSV_UPPER = DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER  # the paper's bounds, as tile_grid's defaults
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH_SIZE = 64
DECODE_TILES_PER_JOB = TILES_PER_JOB  # (b): stored tiles per pool job, as histofast's tiled-TIFF reader
SYNTH_SEED, SYNTH_TISSUE = 0, 0.5
DEFAULT_SIZE, QUICK_SIZE = 16384, 4096
DEFAULT_RECIPE_TILES, QUICK_RECIPE_TILES = 1024, 32  # ~10-20 s at the recipe's ~60-100 tiles/s on one core
DEFAULT_REPEATS = 3
DEFAULT_JSON = Path(".benchmarks") / "tiles_per_second.json"  # .benchmarks/ is git-ignored (pytest-benchmark's)
METHODS = ("recipe", "decode", "tile_grid", "iter_tiles", "two_pass")
LABELS = {"recipe": "(a) recipe", "decode": "(b) decode", "tile_grid": "(c) tile_grid",
          "iter_tiles": "(d) iter_tiles", "two_pass": "(d') two_pass"}
# (name, method, reference, minimum ratio of MP/s, stride or None for every stride measured)
TARGETS = (
    ("tile_grid >= 10x recipe at stride 256", "tile_grid", "recipe", 10.0, 256),
    ("tile_grid >= 0.85x decode limit", "tile_grid", "decode", 0.85, None),
    ("iter_tiles >= 0.7x decode limit", "iter_tiles", "decode", 0.7, None),
)


# --- command line ------------------------------------------------------------------------------------------

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
                     help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
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
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``histofast bench`` as a function: parse ``argv`` (default ``sys.argv[1:]``) and run."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed options (``add_arguments``'s); 0 on success, 1 for a missed target with
    ``--strict``, 2 when the benchmark cannot run (missing slide, unreadable file)."""
    from .errors import HistofastError

    log = _Log(quiet=args.quiet)
    try:
        return _run(args, log)
    except (HistofastError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# --- what each method did, and its timings -----------------------------------------------------------------

@dataclass
class Work:
    """What one run of a method covered.

    tiles: grid tiles scored (for the decode limit: stored tiles decoded); kept: tiles delivered as pixels;
    area: level-0 pixels credited (scored rows / grid rows × W·H; the whole level W·H)."""

    tiles: int
    area: int
    kept: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class Result:
    method: str
    stride: int | None
    work: Work | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # this process, all threads
    others: list[float | None] = field(default_factory=list)  # CPU seconds other processes used meanwhile

    @property
    def cores(self) -> float:
        """Cores this process kept busy: median CPU over median wall time."""
        return statistics.median(self.cpu) / self.median

    @property
    def others_cores(self) -> float | None:
        """Cores other processes on the machine kept busy meanwhile (None where /proc/stat is unreadable)."""
        known = [o for o in self.others if o is not None]
        return statistics.median(known) / self.median if known else None

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    def rate(self, amount: float) -> float:
        return amount / self.median

    @property
    def mp_per_s(self) -> float:
        return self.rate(self.work.area) / 1e6

    @property
    def tiles_per_s(self) -> float:
        return self.rate(self.work.tiles)


def _run(args: argparse.Namespace, log: "_Log") -> int:
    import histofast

    size = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    repeats = args.repeats or DEFAULT_REPEATS
    recipe_tiles = args.recipe_tiles or (QUICK_RECIPE_TILES if args.quick else DEFAULT_RECIPE_TILES)
    threads = args.threads or os.cpu_count() or 1
    tile = args.tile_size
    strides = list(dict.fromkeys(args.strides))
    methods = list(args.methods)

    if args.slide is not None:
        if args.size is not None:
            log(f"--size {args.size} is ignored with --slide")
        path = Path(args.slide)
        if not path.is_file():
            raise histofast.SlideError(path, "no such file" if not path.exists() else "not a regular file")
    else:
        path = _synthetic_slide(size, args.cache_dir, args.regenerate, log)

    slide_info, page = _describe_slide(path, threads)
    try:
        return _measure(args, log, path, slide_info, page, tile, strides, methods, repeats, recipe_tiles, threads)
    finally:
        if page is not None:
            page.parent.close()


def _measure(args: argparse.Namespace, log: "_Log", path: Path, slide_info: dict[str, Any], page: Any, tile: int,
             strides: list[int], methods: list[str], repeats: int, recipe_tiles: int | str, threads: int) -> int:
    import histofast

    width, height = slide_info["level0_dimensions"]
    if tile > min(width, height):
        raise histofast.HistofastError(f"--tile-size {tile}: larger than level 0 ({width}×{height})")
    log(f"slide {path} ({width}×{height}, {slide_info['file_bytes'] / 2**20:.0f} MiB, "
        f"{slide_info['compression']}, {slide_info['tile_width']}×{slide_info['tile_height']} tiles, "
        f"histofast backend {slide_info['histofast_backend']})")

    if "recipe" in methods and not _have_cv2():
        log("skipping (a) recipe: OpenCV is not installed (pip install opencv-python-headless)", always=True)
        methods.remove("recipe")
    if "recipe" in methods and not _openslide_reads(path):
        log("skipping (a) recipe: OpenSlide does not read this file", always=True)
        methods.remove("recipe")
    if "decode" in methods and page is None:
        log("skipping (b) decode limit: level 0 is not a tiled TIFF page tifffile can decode", always=True)
        methods.remove("decode")

    area = width * height
    jobs: list[tuple[Result, Callable[[], Work], Callable[[], Any]]] = []  # (result, timed run, warm-up)
    if "decode" in methods:
        decode = _decode_limit(path, page, threads, area)
        jobs.append((Result("decode", None), decode, decode))
    recipe_rows: dict[int, list[int]] = {}
    for stride in strides:
        rows, cols = (height - tile) // stride + 1, (width - tile) // stride + 1
        if "recipe" in methods:
            chosen = _spread_rows(rows, rows if recipe_tiles == "all" else math.ceil(recipe_tiles / cols))
            recipe_rows[stride] = chosen
            jobs.append((Result("recipe", stride),
                         _recipe(path, tile, stride, chosen, area * len(chosen) // rows),
                         _recipe(path, tile, stride, chosen[:1], 0)))
        for name, make in (("tile_grid", _tile_grid), ("iter_tiles", _iter_tiles), ("two_pass", _two_pass)):
            if name in methods:
                fn = make(path, tile, stride, threads, area)
                jobs.append((Result(name, stride), fn, fn))

    rows_note = ", ".join(f"stride {s}: {len(r)} of {(height - tile) // s + 1}" for s, r in recipe_rows.items())
    log(f"{len(jobs)} measurements × ({repeats} timed + 1 warm-up), round-robin; {threads} decode threads"
        + (f"; recipe rows {rows_note}" if recipe_rows else ""))
    load_before = _loadavg()
    for result, _, warm in jobs:
        log(f"warm-up {_name(result)}")
        warm()
    # Round-robin: every repeat times every method once, so a burst of load on this shared machine
    # slows one run of each method rather than all runs of one.
    for rep in range(repeats):
        for result, fn, _ in jobs:
            gc.collect()
            if args.wait_idle > 0 and not _wait_idle(args.wait_idle):
                log(f"other processes still busy after {args.wait_idle:g} s; timing anyway")
            busy0, c0, t0 = _machine_busy(), time.process_time(), time.perf_counter()
            work = fn()
            wall, cpu, busy1 = time.perf_counter() - t0, time.process_time() - c0, _machine_busy()
            others = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - cpu)
            result.wall.append(wall)
            result.cpu.append(cpu)
            result.others.append(others)
            result.work = work
            log(f"run {rep + 1}/{repeats} {_name(result)}: {wall:.2f} s, {cpu:.2f} s CPU"
                + ("" if others is None else f", other processes {others:.2f} s CPU"))
    load_after = _loadavg()

    results = [r for r, _, _ in jobs]
    checks = _checks(results, recipe_rows)
    for message in checks.get("problems", []):
        log(f"CHECK FAILED: {message}", always=True)
    targets = _targets(results, strides)
    report = {
        "benchmark": "tiles_per_second",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine_info": {"histofast": machine_info(), "load_average": {"before": load_before, "after": load_after}},
        "slide": slide_info,
        "config": {"tile_size": tile, "strides": strides, "repeats": repeats, "warmups": 1, "threads": threads,
                   "wait_idle_s": args.wait_idle,
                   "recipe_tiles": recipe_tiles, "recipe_rows": {str(k): v for k, v in recipe_rows.items()},
                   "max_white": MAX_WHITE, "hsv_lower": HSV_LOWER, "hsv_upper": HSV_UPPER,
                   "augment": {"rot90": True, "flip": True, "max_shift": 16, "seed": 0}, "out_dtype": "float32",
                   "layout": "NCHW", "mean": MEAN, "std": STD, "batch_size": BATCH_SIZE,
                   "area_definition": "level-0 pixels credited: scored grid rows / all grid rows × W·H; "
                                      "whole-level methods W·H", "timing": "wall clock, time.perf_counter"},
        "results": [_result_json(r, results) for r in results],
        "targets": targets,
        "checks": checks,
    }
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        _print_table(results, targets, slide_info, threads, report["machine_info"]["histofast"])
        if not args.no_json:
            from .atomic import atomic_open

            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(out) as f:
                json.dump(report, f, indent=2)
                f.write("\n")
            print(f"\nJSON: {out.resolve()}")
    if checks.get("problems"):
        return 1
    return 1 if args.strict and any(t["passed"] is False for t in targets) else 0


# --- the methods -------------------------------------------------------------------------------------------

def _recipe(path: Path, tile: int, stride: int, rows: list[int], area: int) -> Callable[[], Work]:
    """The seed's loop, unchanged: one OpenSlide read per grid tile, OpenCV HSV + inRange, mean."""

    def run() -> Work:
        import cv2
        import openslide

        slide = openslide.OpenSlide(os.fspath(path))
        try:
            cols = (slide.dimensions[0] - tile) // stride + 1
            ratio = np.empty((len(rows), cols), np.float64)
            for r, i in enumerate(rows):
                for j in range(cols):
                    region = np.asarray(slide.read_region((j * stride, i * stride), 0, (tile, tile)))[..., :3]
                    mask = cv2.inRange(cv2.cvtColor(region, cv2.COLOR_RGB2HSV), HSV_LOWER, HSV_UPPER)
                    ratio[r, j] = (mask > 0).mean()
        finally:
            slide.close()
        keep = ratio <= MAX_WHITE
        return Work(ratio.size, area, int(keep.sum()), {"white_ratio": ratio})

    return run


def _decode_limit(path: Path, page: Any, threads: int, area: int) -> Callable[[], Work]:
    """Every stored tile of level 0: os.pread, then the codec tifffile would call, in a thread pool.

    The tightest decode there is: JPEG tiles go straight into a reused per-thread buffer (no allocation,
    no page faults), a few tiles per pool job; nothing is copied anywhere after decoding."""
    import imagecodecs
    import tifffile

    offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    tables = page.jpegtables
    local = threading.local()
    if page.compression == 7:  # JPEG: the decoder and colour spaces tifffile's page.decode uses
        colorspace, outcolorspace = tifffile.tifffile.jpeg_decode_colorspace(
            page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
        shape = (page.tilelength, page.tilewidth, page.samplesperpixel)

        def decode(data: bytes, index: int) -> Any:
            out = getattr(local, "out", None)
            if out is None:
                out = local.out = np.empty(shape, np.uint8)
            return imagecodecs.jpeg8_decode(data, tables=tables, colorspace=colorspace, outcolorspace=outcolorspace,
                                            out=out)
    else:
        def decode(data: bytes, index: int) -> Any:
            return page.decode(data, index, jpegtables=tables)[0]

    def run() -> Work:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            def job(start: int) -> None:
                for index in range(start, min(start + DECODE_TILES_PER_JOB, len(offsets))):
                    if counts[index]:
                        decode(os.pread(fd, counts[index], offsets[index]), index)

            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(job, range(0, len(offsets), DECODE_TILES_PER_JOB)):
                    pass
        finally:
            os.close(fd)
        return Work(sum(1 for c in counts if c), area)

    return run


def _augment() -> Any:
    from . import Augment

    return Augment(rot90=True, flip=True, max_shift=16, seed=0)


def _cut_options() -> dict[str, Any]:
    return dict(augment=_augment(), out_dtype="float32", layout="NCHW", mean=MEAN, std=STD, batch_size=BATCH_SIZE)


def _consume(batches: Any) -> tuple[int, int]:
    """Read one element of every batch (as a training step would touch it); (tiles, batches)."""
    tiles = count = 0
    for batch in batches:
        float(batch.images[0, 0, 0, 0])
        tiles += len(batch)
        count += 1
    return tiles, count


def _tile_grid(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        from . import open_slide, tile_grid

        with open_slide(path, workers=threads) as slide:
            grid = tile_grid(slide, tile, stride, max_white=MAX_WHITE)
        return Work(grid.white_ratio.size, area, len(grid), {"white_ratio": grid.white_ratio})

    return run


def _iter_tiles(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        from . import iter_tiles, open_slide

        with open_slide(path, workers=threads) as slide:
            stream = iter_tiles(slide, tile, stride, max_white=MAX_WHITE, **_cut_options())
            tiles, batches = _consume(stream)
        return Work(stream.grid.white_ratio.size, area, tiles, {"batches": batches})

    return run


def _two_pass(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        from . import open_slide, tile_grid

        with open_slide(path, workers=threads) as slide:
            grid = tile_grid(slide, tile, stride, max_white=MAX_WHITE)
            tiles, batches = _consume(grid.tiles(slide, **_cut_options()))
        return Work(grid.white_ratio.size, area, tiles, {"batches": batches})

    return run


# --- the slide ---------------------------------------------------------------------------------------------

def _synthetic_slide(size: int, cache_dir: str | None, regenerate: bool, log: "_Log") -> Path:
    """The generated benchmark slide, written once per (size, synth source) and reused."""
    from . import synth

    # The synth module's source is part of the key: a changed generator never reuses an old file.
    key = hashlib.sha256(Path(synth.__file__).read_bytes()).hexdigest()[:12]
    name = f"synth-{size}x{size}-seed{SYNTH_SEED}-tissue{SYNTH_TISSUE:g}-{key}.svs"
    for directory in _cache_dirs(cache_dir):
        path = directory / name
        if path.is_file() and not regenerate:
            log(f"using cached slide {path}")
            return path
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if cache_dir is not None:
                raise
            log(f"cannot use {directory} ({e}); trying the next cache directory")
            continue
        log(f"writing a {size}×{size} synthetic slide to {path} (once; later runs reuse it)")
        start = time.perf_counter()
        synth.write_slide(path, size, size, seed=SYNTH_SEED, tissue_fraction=SYNTH_TISSUE)
        log(f"slide written in {time.perf_counter() - start:.1f} s")
        return path
    tried = ", ".join(map(str, _cache_dirs(cache_dir)))
    raise OSError(f"no writable cache directory for the generated slide (tried {tried}); use --cache-dir")


def _cache_dirs(cache_dir: str | None) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir)]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(base) / "histofast" / "bench", Path(tempfile.gettempdir()) / "histofast-bench"]


def _describe_slide(path: Path, threads: int) -> tuple[dict[str, Any], Any]:
    """The slide's properties for the report, and its level-0 tifffile page (None if not a tiled TIFF)."""
    from . import open_slide

    with open_slide(path, workers=threads) as slide:
        info: dict[str, Any] = {
            "path": str(path.resolve()), "file_bytes": path.stat().st_size,
            "level0_dimensions": list(slide.dimensions), "level_dimensions": [list(d) for d in slide.level_dimensions],
            "mpp": slide.mpp, "objective_power": slide.objective_power,
            "vendor": slide.properties.get("openslide.vendor"), "histofast_backend": slide.backend,
            "direct_levels": list(getattr(slide, "direct_levels", ())),
        }
        info["tile_width"], info["tile_height"] = slide.tile_shape(0)
        dims = slide.dimensions
    page = None
    try:
        import tifffile

        tif = tifffile.TiffFile(os.fspath(path))
    except Exception:  # not a TIFF at all: no decode limit
        info["compression"] = "unknown (not a TIFF)"
        return info, None
    for candidate in tif.pages:
        if candidate.is_tiled and (candidate.imagewidth, candidate.imagelength) == tuple(dims):
            page = candidate
            break
    if page is None:
        tif.close()
        info["compression"] = "unknown (no tiled level-0 page)"
        return info, None
    info.update(compression=_enum_name(tifffile.COMPRESSION, page.compression),
                photometric=_enum_name(tifffile.PHOTOMETRIC, page.photometric),
                stored_tiles=len(page.dataoffsets), tile_width=page.tilewidth, tile_height=page.tilelength)
    quality = next((part.split("=", 1)[1] for part in (page.description or "").replace("|", " ").split()
                    if part.startswith("Q=")), None)
    if quality is not None:
        info["jpeg_quality"] = quality
    return info, page  # the caller closes page.parent (the TiffFile); the decode limit reads with its own fd


def _enum_name(enum: Any, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


# --- results -----------------------------------------------------------------------------------------------

def _find(results: list[Result], method: str, stride: int | None) -> Result | None:
    return next((r for r in results if r.method == method and (stride is None or r.stride == stride)), None)


def _ratio(result: Result, reference: Result | None, best: bool = False) -> float | None:
    """MP/s of ``result`` over the reference's (the recipe at the same stride, or the decode limit), from the
    medians, or from the fastest runs with ``best`` (other load only ever adds time)."""
    if reference is None or result is reference:
        return None
    if best:
        return result.work.area / min(result.wall) / (reference.work.area / min(reference.wall))
    return result.mp_per_s / reference.mp_per_s


def _references(result: Result, results: list[Result]) -> tuple[Result | None, Result | None]:
    recipe = _find(results, "recipe", result.stride) if result.stride is not None else None
    return recipe, _find(results, "decode", None)


def _result_json(r: Result, results: list[Result]) -> dict[str, Any]:
    recipe, decode = _references(r, results)
    extra = {k: v for k, v in r.work.extra.items() if k != "white_ratio"}
    return {
        "method": r.method, "label": LABELS[r.method], "stride": r.stride,
        "wall_s": r.wall, "cpu_s": r.cpu, "others_cpu_s": r.others, "median_s": r.median, "min_s": min(r.wall),
        "max_s": max(r.wall), "cpu_median_s": statistics.median(r.cpu), "cores_used": r.cores,
        "others_cores": r.others_cores,
        "tiles_scored": r.work.tiles, "tiles_out": r.work.kept, "area_px": r.work.area,
        "tiles_per_s": r.tiles_per_s, "tiles_out_per_s": r.rate(r.work.kept), "mp_per_s": r.mp_per_s,
        "ratio_vs_recipe": _ratio(r, recipe), "ratio_vs_decode": _ratio(r, decode),
        "ratio_vs_decode_of_mins": _ratio(r, decode, best=True),
        # Per unit of level area, the decode limit's CPU seconds over this method's: how much of the CPU it
        # spends decoding, whatever else ran on the machine meanwhile.
        "cpu_ratio_vs_decode": None if decode is None or r is decode else
        statistics.median(decode.cpu) / decode.work.area / (statistics.median(r.cpu) / r.work.area), **extra,
    }


def _targets(results: list[Result], strides: list[int]) -> list[dict[str, Any]]:
    out = []
    for name, method, reference, minimum, at in TARGETS:
        for stride in ([at] if at is not None else strides):
            r = _find(results, method, stride)
            ref = _find(results, reference, stride if reference == "recipe" else None)
            measured = r is not None and ref is not None
            ratio = _ratio(r, ref) if measured else None
            best = _ratio(r, ref, best=True) if measured else None
            out.append({"target": name, "method": method, "reference": reference, "stride": stride,
                        "minimum": minimum, "ratio": ratio, "ratio_of_fastest_runs": best,
                        "passed": None if ratio is None else ratio >= minimum})
    return out


def _checks(results: list[Result], recipe_rows: dict[int, list[int]]) -> dict[str, Any]:
    """The methods did the same work: the recipe's keep decisions on its rows equal tile_grid's, and the
    one-pass and two-pass streams delivered exactly the tiles tile_grid keeps."""
    checks: dict[str, Any] = {"problems": []}
    for stride, rows in recipe_rows.items():
        recipe, grid = _find(results, "recipe", stride), _find(results, "tile_grid", stride)
        if recipe is None or grid is None:
            continue
        ours = grid.work.extra["white_ratio"][rows].astype(np.float64)
        theirs = recipe.work.extra["white_ratio"]
        differ = int(((ours <= MAX_WHITE) != (theirs <= MAX_WHITE)).sum())
        checks[f"recipe_vs_tile_grid_stride{stride}"] = {
            "tiles": int(theirs.size), "keep_differs": differ,
            "max_abs_white_ratio_diff": float(np.abs(ours - theirs).max())}
        if differ:
            checks["problems"].append(f"stride {stride}: {differ} of {theirs.size} recipe keep decisions differ "
                                      f"from tile_grid's")
    for r in results:
        if r.method in ("iter_tiles", "two_pass"):
            grid = _find(results, "tile_grid", r.stride)
            if grid is not None and grid.work.kept != r.work.kept:
                checks["problems"].append(f"stride {r.stride}: {r.method} delivered {r.work.kept} tiles, "
                                          f"tile_grid keeps {grid.work.kept}")
    return checks


def _print_table(results: list[Result], targets: list[dict], slide: dict, threads: int, machine: dict) -> None:
    w, h = slide["level0_dimensions"]
    dirty = " (dirty)" if machine.get("git_dirty") else ""
    print(f"histofast {machine['version']} @ {machine['git_sha'][:10]}{dirty}, "
          f"{machine['cores']} cores ({machine['cpu']}), {threads} decode threads, avx2={machine['avx2']}, "
          f"OpenMP threads={machine['cpu_threads']}, cuda_compiled={machine['cuda_compiled']}, gpu={machine['gpu']}")
    print(f"slide {Path(slide['path']).name}: {w}×{h}, {slide['file_bytes'] / 2**20:.0f} MiB, {slide['compression']} "
          f"{slide['tile_width']}×{slide['tile_height']} tiles, backend {slide['histofast_backend']}")
    print("seconds: median of the timed runs (min–max). MP/s: level-0 area credited per second. Ratios: of MP/s\n"
          "(at one stride the same as of tiles/s). cpu: cores this process kept busy; others: cores other processes\n"
          "on the machine kept busy meanwhile (their load only ever slows a run down).\n")
    header = (f"{'method':<15}{'stride':>7}{'seconds':>9}{'(min–max)':>15}{'tiles/s':>9}{'MP/s':>8}"
              f"{'× (a)':>8}{'× (b)':>7}{'kept/s':>8}{'cpu':>6}{'others':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        recipe, decode = _references(r, results)
        ra, rb = _ratio(r, recipe), _ratio(r, decode)
        spread = f"({min(r.wall):.2f}–{max(r.wall):.2f})"
        tiles = "—" if r.method == "decode" else f"{r.tiles_per_s:,.0f}"
        kept = f"{r.rate(r.work.kept):,.0f}" if r.method in ("iter_tiles", "two_pass") else "—"
        others = "?" if r.others_cores is None else f"{r.others_cores:.1f}"
        print(f"{LABELS[r.method]:<15}{r.stride or '—':>7}{r.median:>9.2f}{spread:>15}{tiles:>9}{r.mp_per_s:>8.1f}"
              f"{_fmt_ratio(ra):>8}{_fmt_ratio(rb):>7}{kept:>8}{r.cores:>6.1f}{others:>8}")
    decode = _find(results, "decode", None)
    if decode is not None:
        print(f"\n(b) decodes all {decode.work.tiles} stored tiles of level 0: "
              f"{decode.tiles_per_s:,.0f} stored tiles/s")
    for r in results:
        if r.method == "recipe":
            print(f"(a) at stride {r.stride} scores {r.work.tiles} of the grid's tiles "
                  f"({len(r.work.extra['white_ratio'])} whole rows spread over the level)")
    for r in results:
        if r.method in ("iter_tiles", "two_pass"):
            print(f"{LABELS[r.method]} at stride {r.stride} delivers {r.work.kept} kept tiles in "
                  f"{r.work.extra['batches']} batches")
    print("\ntargets (ratio of medians; of the fastest runs in brackets):")
    for t in targets:
        verdict = "not measured" if t["passed"] is None else ("PASS" if t["passed"] else "FAIL")
        ratio = "" if t["ratio"] is None else f"{t['ratio']:.2f}× ({t['ratio_of_fastest_runs']:.2f}×)"
        print(f"  {verdict:<13}{t['target']:<40} stride {t['stride']:<5}{ratio}")


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


# --- machine and environment -------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """The machine record every benchmark JSON carries: build, git sha (and dirty flag), cores, GPU, CPU model,
    platform and library versions (benchmarks/conftest.py uses it too)."""
    from . import build_info, cuda_available

    repo = Path(__file__).resolve().parents[1]
    info: dict[str, Any] = {**build_info(), "git_sha": _git(repo, "rev-parse", "HEAD") or "unknown",
                            "cores": os.cpu_count()}
    # diff-index only reads (unlike git status, which may rewrite the index).
    dirty = subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--"], cwd=repo, capture_output=True) \
        if info["git_sha"] != "unknown" else None
    info["git_dirty"] = None if dirty is None else dirty.returncode != 0
    info["gpu"] = "none"
    if cuda_available():
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name()
        except Exception:  # torch missing: the device count is still in build_info
            info["gpu"] = f"{info['cuda_devices']} CUDA device(s)"
    info["cpu"] = _cpu_model()
    info["platform"] = platform.platform()
    info["python"] = platform.python_version()
    info["libraries"] = _versions()
    return info


def _git(repo: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"numpy": np.__version__}
    for name in ("tifffile", "imagecodecs", "openslide", "cv2"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    try:
        import imagecodecs

        out["libjpeg"] = imagecodecs.jpeg8_version()
    except Exception:
        pass
    try:
        import openslide

        out["libopenslide"] = openslide.__library_version__
    except Exception:
        pass
    return out


def _have_cv2() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def _openslide_reads(path: Path) -> bool:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(os.fspath(path)) is not None
    except Exception:  # OpenSlide missing or the file unreadable
        return False


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _machine_busy() -> float | None:
    """CPU seconds all processes on the machine have used since boot (/proc/stat), None where unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, AttributeError):
        return None


def _wait_idle(limit: float, quiet_cores: float = 0.25, window: float = 0.5) -> bool:
    """Wait (up to ``limit`` seconds) for a ``window`` in which other processes kept fewer than ``quiet_cores``
    cores busy; True when one came (or when the machine's load cannot be read)."""
    deadline = time.perf_counter() + limit
    while True:
        busy0, c0 = _machine_busy(), time.process_time()
        time.sleep(window)
        busy1 = _machine_busy()
        if busy0 is None or busy1 is None:
            return True
        if (busy1 - busy0 - (time.process_time() - c0)) / window < quiet_cores:
            return True
        if time.perf_counter() >= deadline:
            return False


def _spread_rows(rows: int, k: int) -> list[int]:
    """``k`` grid rows spread evenly from the first to the last (deterministic; all when k >= rows)."""
    k = max(1, min(rows, k))
    return sorted({int(round(x)) for x in np.linspace(0, rows - 1, k)})


def _name(r: Result) -> str:
    return LABELS[r.method] + (f" stride {r.stride}" if r.stride is not None else "")


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str, always: bool = False) -> None:
        if always or not self.quiet:
            print(f"[{PROG} {time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _tiles(text: str) -> int | str:
    return "all" if text == "all" else _positive_int(text)


def _methods(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {','.join(METHODS)}")
    return list(dict.fromkeys(names))
