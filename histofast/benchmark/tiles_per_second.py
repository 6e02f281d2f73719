"""End-to-end tiles per second (``histofast bench``, ``benchmarks/tiles_per_second.py``): the seed's OpenSlide +
OpenCV recipe, the JPEG decode limit, tile_grid and iter_tiles (and with ``--peers`` cuCIM and tiffslide) on one
slide, all timed in one process, ratios from one run. The options are in ``options``, the methods in ``methods``,
the report in ``report``."""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import HistofastError, SlideError
from ..utils.atomic import atomic_open
from ..utils.machine import busy_cpu_seconds, load_average, machine_info, wait_idle
from . import methods as m
from .flags import (
    DEFAULT_RECIPE_TILES,
    DEFAULT_REPEATS,
    DEFAULT_SIZE,
    DICOM_METHODS,
    LABELS,
    PEERS,
    PROG,
    QUICK_RECIPE_TILES,
    QUICK_SIZE,
)
from .report import Result, check_results, check_targets, method_name, print_table, result_json
from .slide import describe_slide, synthetic_dicom, synthetic_slide


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed options (``add_arguments``'s); 0 on success, 1 for a missed target with
    ``--strict``, 2 when the benchmark cannot run (missing slide, unreadable file)."""
    log = _Log(quiet=args.quiet)
    try:
        return _run(args, log)
    except (HistofastError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, log: "_Log") -> int:
    size = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    repeats = args.repeats or DEFAULT_REPEATS
    recipe_tiles = args.recipe_tiles or (QUICK_RECIPE_TILES if args.quick else DEFAULT_RECIPE_TILES)
    threads = args.threads or os.cpu_count() or 1
    tile = args.tile_size
    strides = list(dict.fromkeys(args.strides))
    methods = list(args.methods) + [p for p in PEERS if args.peers and p not in args.methods]

    if args.slide is not None:
        if args.size is not None:
            log(f"--size {args.size} is ignored with --slide")
        path = Path(args.slide)
        if not path.is_file():
            raise SlideError(path, "no such file" if not path.exists() else "not a regular file")
    else:
        path = synthetic_slide(size, args.cache_dir, args.regenerate, log, args.glass)

    dicom = None
    if any(method in DICOM_METHODS for method in methods):
        if args.slide is None:
            dicom = synthetic_dicom(path, size, args.glass, log)
        else:
            for method in [x for x in methods if x in DICOM_METHODS]:
                log(f"skipping {method}: it times the generated slide's DICOM series (not made for --slide)",
                    always=True)
                methods.remove(method)
    slide_info, page = describe_slide(path, threads)
    try:
        return _measure(args, log, path, slide_info, page, tile, strides, methods, repeats, recipe_tiles, threads,
                        dicom)
    finally:
        if page is not None:
            page.parent.close()


def _measure(args: argparse.Namespace, log: "_Log", path: Path, slide_info: dict[str, Any], page: Any, tile: int,
             strides: list[int], methods: list[str], repeats: int, recipe_tiles: int | str, threads: int,
             dicom: Path | None) -> int:
    width, height = slide_info["level0_dimensions"]
    if tile > min(width, height):
        raise HistofastError(f"--tile-size {tile}: larger than level 0 ({width}×{height})")
    log(f"slide {path} ({width}×{height}, {slide_info['file_bytes'] / 2**20:.0f} MiB, "
        f"{slide_info['compression']}, {slide_info['tile_width']}×{slide_info['tile_height']} tiles, "
        f"histofast backend {slide_info['histofast_backend']})")

    skipped: list[dict[str, str]] = []

    def skip(method: str, reason: str, install: str | None = None) -> None:
        log(f"skipping {LABELS[method]}: {reason}" + (f" ({install})" if install else ""), always=True)
        methods.remove(method)
        skipped.append({"method": method, "reason": reason, **({"install": install} if install else {})})

    if not m.have_cv2():  # the recipe's white-ratio rule, which the peers share
        for method in [x for x in methods if x == "recipe" or x in PEERS]:
            skip(method, "OpenCV is not installed", "pip install opencv-python-headless")
    if "recipe" in methods and not m.openslide_reads(path):
        skip("recipe", "OpenSlide does not read this file")
    for method in ("resampled", "dct"):
        if method in methods and (reason := m.resampled_unavailable(path, method)) is not None:
            skip(method, reason)
    if "decode" in methods and page is None:
        skip("decode", "level 0 is not a tiled TIFF page tifffile can decode")
    for peer in [x for x in methods if x in PEERS]:
        reason = m.peer_unavailable(peer, path)
        if reason is not None:
            skip(peer, reason, m.PEER_INSTALL[peer] if reason.startswith("not installed") else None)
    peers = [x for x in methods if x in PEERS]

    area = width * height
    jobs: list[tuple[Result, Callable[[], m.Work], Callable[[], Any]]] = []  # (result, timed run, warm-up)
    if "decode" in methods:
        decode = m.decode_limit(path, page, threads, area)
        jobs.append((Result("decode", None), decode, decode))
    recipe_rows: dict[int, list[int]] = {}
    for stride in strides:
        rows, cols = (height - tile) // stride + 1, (width - tile) // stride + 1
        chosen = _spread_rows(rows, rows if recipe_tiles == "all" else math.ceil(recipe_tiles / cols))
        credited = area * len(chosen) // rows
        if "recipe" in methods or peers:
            recipe_rows[stride] = chosen
        if "recipe" in methods:
            jobs.append((Result("recipe", stride), m.recipe(path, tile, stride, chosen, cols, credited),
                         m.recipe(path, tile, stride, chosen[:1], cols, 0)))
        for method, make in (("tile_grid", m.scan_grid), ("skip_background", m.skip_background),
                             ("resampled", m.resampled), ("dct", m.dct), ("iter_tiles", m.scan_and_cut),
                             ("two_pass", m.two_pass)):
            if method in methods:
                fn = make(path, tile, stride, threads, area)
                jobs.append((Result(method, stride), fn, fn))
        for method, make in (("dicom", m.dicom), ("dicom_openslide", m.dicom_openslide)):
            if method in methods:  # the same tiles as a DICOM series
                fn = make(dicom, tile, stride, threads, area)
                jobs.append((Result(method, stride), fn, fn))
        for peer in peers:  # the recipe's rows and rule, --threads workers
            make = m.PEERS[peer]
            jobs.append((Result(peer, stride), make(path, tile, stride, chosen, cols, credited, threads),
                         make(path, tile, stride, chosen[:1], cols, 0, threads)))

    rows_note = ", ".join(f"stride {s}: {len(r)} of {(height - tile) // s + 1}" for s, r in recipe_rows.items())
    log(f"{len(jobs)} measurements × ({repeats} timed + 1 warm-up), round-robin; {threads} decode threads"
        + (f"; recipe rows {rows_note}" if recipe_rows else ""))
    load_before = load_average()
    for result, _, warm in jobs:
        log(f"warm-up {method_name(result)}")
        warm()
    # Round-robin: every repeat times every method once, so a burst of load on this shared machine
    # slows one run of each method rather than all runs of one.
    for rep in range(repeats):
        for result, fn, _ in jobs:
            gc.collect()
            if args.wait_idle > 0 and not wait_idle(args.wait_idle):
                log(f"other processes still busy after {args.wait_idle:g} s; timing anyway")
            busy0, c0, t0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
            work = fn()
            wall, cpu, busy1 = time.perf_counter() - t0, time.process_time() - c0, busy_cpu_seconds()
            others = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - cpu)
            result.wall.append(wall)
            result.cpu.append(cpu)
            result.others.append(others)
            result.work = work
            log(f"run {rep + 1}/{repeats} {method_name(result)}: {wall:.2f} s, {cpu:.2f} s CPU"
                + ("" if others is None else f", other processes {others:.2f} s CPU"))
    load_after = load_average()

    results = [r for r, _, _ in jobs]
    checks = check_results(results, recipe_rows)
    for message in checks.get("problems", []):
        log(f"CHECK FAILED: {message}", always=True)
    for message in checks.get("peer_mismatches", []):
        log(f"PEER MISMATCH: {message}", always=True)
    targets = check_targets(results, strides)
    report = {
        "benchmark": "tiles_per_second",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine_info": {"histofast": machine_info(), "load_average": {"before": load_before, "after": load_after}},
        "slide": slide_info,
        "config": {"tile_size": tile, "strides": strides, "glass": None if args.slide else args.glass,
                   "repeats": repeats, "warmups": 1, "threads": threads,
                   "wait_idle_s": args.wait_idle,
                   "recipe_tiles": recipe_tiles, "recipe_rows": {str(k): v for k, v in recipe_rows.items()},
                   "peers": {p: {"version": m.peer_version(p), "workers": threads} for p in peers},
                   "peer_batch_size": m.BATCH_SIZE if "cucim" in peers else None,
                   "max_white": m.MAX_WHITE, "hsv_lower": m.HSV_LOWER, "hsv_upper": m.HSV_UPPER,
                   "augment": {"rot90": True, "flip": True, "max_shift": 16, "seed": 0}, "out_dtype": "float32",
                   "layout": "NCHW", "mean": m.MEAN, "std": m.STD, "batch_size": m.BATCH_SIZE,
                   "area_definition": "level-0 pixels credited: scored grid rows / all grid rows × W·H; "
                                      "whole-level methods W·H", "timing": "wall clock, time.perf_counter"},
        "results": [result_json(r, results) for r in results],
        "targets": targets,
        "checks": checks,
        "skipped": skipped,
    }
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_table(results, targets, slide_info, threads, report["machine_info"]["histofast"], skipped,
                    checks.get("peer_mismatches", []))
        if not args.no_json:
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(out) as f:
                json.dump(report, f, indent=2)
                f.write("\n")
            print(f"\nJSON: {out.resolve()}")
    if checks.get("problems"):
        return 1
    return 1 if args.strict and any(t["passed"] is False for t in targets) else 0


def _spread_rows(rows: int, k: int) -> list[int]:
    """``k`` grid rows spread evenly from the first to the last (deterministic; all when k >= rows)."""
    k = max(1, min(rows, k))
    return sorted({int(round(x)) for x in np.linspace(0, rows - 1, k)})


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str, always: bool = False) -> None:
        if always or not self.quiet:
            print(f"[{PROG} {time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)

