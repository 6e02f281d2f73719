"""DCT-scaled JPEG decoding against histofast's resampled view (issue 23): level 0 of a JPEG slide decoded at 1/s
by libjpeg's DCT scaling (``ops.decode_jpeg(scale=s)``) beside the view the grid would otherwise be cut from
(``LevelView(slide, 0, scale=s)``: a full decode, then a triangle filter of radius s) and a plain s×s box mean of the
level-0 pixels; how far apart their pixels are, how many tile keep decisions change, and how fast each is, in one run.

    python benchmarks/dct_scaled.py                  # 8192² generated SVS, 70 % glass, downsamples 2 and 4, ~1 min
    python benchmarks/dct_scaled.py --size 16384     # ~4 min on 2 cores
    python benchmarks/dct_scaled.py --quick          # 2048², seconds (too small to judge the speed)
    python benchmarks/dct_scaled.py --slide my.svs --threads 1

For each downsample s (level 0 only; the stored tile side must be a multiple of s):

- **Pixels.** ``dct``: every stored tile decoded at 1/s into its place (a W×H level gives ceil(W/s)×ceil(H/s) pixels;
  the comparison uses the view's floor(W/s)×floor(H/s)); ``view``: ``LevelView(slide, 0, scale=s).read`` of the whole
  view (pixel (x, y) centred on level-0 ((x+½)s, (y+½)s), antialiased triangle of radius s); ``box``: the mean of each
  s×s block of the level-0 pixels (histofast's fast-path decode, numpy, rounded half up). Per channel (R, G, B): the
  max, mean and 99th percentile of |a − b| for dct−view, dct−box and view−box.
- **Keep decisions.** ``ops.white_ratio`` on each image over grids of ``--grid-tiles`` view pixels (stride = tile,
  origin (0, 0), whole tiles: ``tiling/scan.py``'s grid), default HSV bounds, kept when the ratio ≤ ``--max-white``;
  for each pair, the tiles whose decision differs out of the grid's, the largest |Δ ratio|, and the largest distance
  from ``--max-white`` of a differing tile's ratios (how borderline the changes are). The glass share is measured:
  the share of the view's tiles not kept.
- **Speed.** Megapixels of level 0 per second: the whole level decoded at 1/s (``dct 1/s``) against the full decode
  (``full``, scale 1) and against the view (``view s``, full decode + triangle filter), all into arrays allocated
  once, the tile bytes read into memory beforehand (the file's reads are not timed), in ``--threads`` threads (default
  every core; ``--threads 1``: one thread for every method). One untimed warm-up of each method, then ``--repeats``
  rounds running every method once each (round-robin); medians, min–max, this process's CPU seconds and the cores
  other processes kept busy meanwhile (``others``, ``/proc/stat``).

Progress on stderr, the table on stdout, the JSON (default ``.benchmarks/dct_scaled.json``) with the machine record
(``histofast.utils.machine``), the slide, every setting, the pixel and keep comparisons and every timed run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

import histofast as hf
from histofast import ops
from histofast.benchmark.slide import describe_slide, synthetic_slide
from histofast.io.level import LevelView
from histofast.io.tiff import JPEG, _stored_rgb
from histofast.utils.atomic import atomic_write
from histofast.utils.machine import busy_cpu_seconds, load_average, machine_info

TILES_PER_JOB = 8  # stored tiles per decode job, as the fast path's
CHANNELS = ("R", "G", "B")
NEAR = 0.05  # a view tile whose white ratio is this close to max_white is borderline (reported as near_threshold)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


class StoredLevel:
    """Level 0's stored JPEG tiles, read into memory once, decoded at any DCT scale into a level array."""

    def __init__(self, page: Any, path: Path) -> None:
        if page is None or page.compression != JPEG:
            raise SystemExit(f"{path}: level 0 is not a tiled JPEG page: nothing to DCT-scale")
        self.width, self.height = page.imagewidth, page.imagelength
        self.tw, self.th = page.tilewidth, page.tilelength
        self.tables, self.rgb = page.jpegtables, _stored_rgb(page)
        fd = os.open(path, os.O_RDONLY)
        try:
            self.datas = [os.pread(fd, count, offset) for offset, count in zip(page.dataoffsets, page.databytecounts)]
        finally:
            os.close(fd)
        self.across = -(-self.width // self.tw)
        # Compressed bits per stored pixel: what the entropy decoding every scale still does costs (DCT scaling
        # saves the inverse DCT, upsampling, colour conversion and stores, never the Huffman decoding).
        self.bits_per_pixel = 8 * sum(map(len, self.datas)) / (len(self.datas) * self.tw * self.th)

    def empty(self, scale: int) -> np.ndarray:
        """The level at 1/scale: ceil(W/scale) × ceil(H/scale) pixels, touched once so the timed runs do not
        fault its pages in."""
        out = np.empty((-(-self.height // scale), -(-self.width // scale), 3), np.uint8)
        out.fill(0)
        return out

    def decoder(self, scale: int, out: np.ndarray, pool: ThreadPoolExecutor | None) -> Callable[[], None]:
        """A call decoding every stored tile at 1/scale into its place in ``out`` (tiles of side/scale pixels)."""
        if self.tw % scale or self.th % scale:
            raise SystemExit(f"stored tiles {self.tw}×{self.th} are not a multiple of the downsample {scale}")
        sw, sh = self.tw // scale, self.th // scale
        places = [(index, (index % self.across) * sw, (index // self.across) * sh) for index in range(len(self.datas))]
        jobs = [places[i : i + TILES_PER_JOB] for i in range(0, len(places), TILES_PER_JOB)]

        def job(tiles: list[tuple[int, int, int]]) -> None:
            for index, x, y in tiles:
                ops.decode_jpeg(self.datas[index], out[y : y + sh, x : x + sw], tables=self.tables, rgb=self.rgb,
                                scale=scale)

        def run() -> None:
            if pool is None:
                for tiles in jobs:
                    job(tiles)
            else:
                for future in [pool.submit(job, tiles) for tiles in jobs]:
                    future.result()

        return run


def box_mean(level0: np.ndarray, s: int, height: int, width: int) -> np.ndarray:
    """Each s×s block's mean of the level-0 pixels, rounded half up: uint8 (height, width, 3), in row bands."""
    out = np.empty((height, width, 3), np.uint8)
    band = max(1, 1024 // s)
    for y in range(0, height, band):
        h = min(band, height - y)
        block = level0[y * s : (y + h) * s, : width * s].reshape(h, s, width, s, 3)
        out[y : y + h] = np.floor(block.sum(axis=(1, 3), dtype=np.uint32) / (s * s) + 0.5).astype(np.uint8)
    return out


def pixel_diff(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Per channel: max, mean and 99th percentile of |a − b|, and the share of values that differ at all."""
    out: dict[str, Any] = {}
    for c, name in enumerate(CHANNELS):
        d = np.abs(a[..., c].astype(np.int16) - b[..., c].astype(np.int16))
        counts = np.bincount(d.ravel(), minlength=256)
        p99 = int(np.searchsorted(np.cumsum(counts), 0.99 * d.size))
        out[name] = {"max": int(d.max()), "mean": float((counts * np.arange(counts.size)).sum() / d.size),
                     "p99": p99, "differ": float(1 - counts[0] / d.size)}
    return out


def keep_diff(ra: np.ndarray, rb: np.ndarray, max_white: float) -> dict[str, Any]:
    """How the keep decisions (ratio <= max_white) of two white-ratio grids compare."""
    ka, kb = ra <= max_white, rb <= max_white
    differ = ka != kb
    near = np.maximum(np.abs(ra[differ] - max_white), np.abs(rb[differ] - max_white))
    return {"tiles": int(ra.size), "differ": int(differ.sum()), "kept_a": int(ka.sum()), "kept_b": int(kb.sum()),
            "a_only": int((ka & ~kb).sum()), "b_only": int((kb & ~ka).sum()),
            "max_abs_ratio_diff": float(np.abs(ra - rb).max(initial=0)),
            "mean_abs_ratio_diff": float(np.abs(ra - rb).mean()) if ra.size else 0.0,
            "differing_max_distance_from_threshold": float(near.max(initial=0))}


def timed(fn: Callable[[], None]) -> dict[str, float | None]:
    busy0, cpu0, t0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    fn()
    wall, cpu, busy1 = time.perf_counter() - t0, time.process_time() - cpu0, busy_cpu_seconds()
    others = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - cpu) / wall
    return {"wall_s": wall, "cpu_s": cpu, "others_cores": others}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide", type=Path, help="a JPEG SVS/tiled TIFF instead of the generated slide")
    p.add_argument("--size", type=int, default=8192, help="generated slide side, pixels (default 8192)")
    p.add_argument("--glass", type=float, default=0.7, help="generated slide's glass share (default 0.7)")
    p.add_argument("--quick", action="store_true", help="a 2048² slide, 1 repeat")
    p.add_argument("--downsamples", type=int, nargs="+", default=[2, 4], choices=[2, 4, 8],
                   help="DCT scales 1/s of level 0 (default 2 4)")
    p.add_argument("--grid-tiles", type=int, nargs="+", default=[256, 512],
                   help="grid tile sides in view pixels, stride = tile (default 256 512)")
    p.add_argument("--max-white", type=float, default=0.5, help="keep a tile when its white ratio <= this (0.5)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="decode threads for every method (default every core)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--cache-dir", help="where the generated slide is kept (default ~/.cache/histofast/bench)")
    p.add_argument("--regenerate", action="store_true", help="write the generated slide again")
    p.add_argument("--json", type=Path, default=Path(".benchmarks") / "dct_scaled.json")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 2048, 1
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be >= 1")

    path = args.slide or synthetic_slide(args.size, args.cache_dir, args.regenerate, log, glass=args.glass)
    slide_info, page = describe_slide(path, args.threads)
    try:
        stored = StoredLevel(page, path)
    finally:
        if page is not None:
            page.parent.close()
    lw, lh = stored.width, stored.height
    level_mp = lw * lh / 1e6
    pool = ThreadPoolExecutor(args.threads) if args.threads > 1 else None
    slide = hf.open_slide(path, threads=args.threads)
    slide_info.update(stored_tiles=len(stored.datas), stored_bits_per_pixel=stored.bits_per_pixel,
                      jpeg_rgb=stored.rgb, jpeg_tables=stored.tables is not None)
    report: dict[str, Any] = {"machine": machine_info(), "load_average_start": load_average(),
                              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "slide": slide_info, "pixels": {}, "keep": {}, "speed": {}}
    try:
        # The images compared (and the outputs the timed runs write into, reused).
        full = stored.empty(1)
        methods: dict[str, Callable[[], None]] = {"full": stored.decoder(1, full, pool)}
        dcts, views = {}, {}
        for s in args.downsamples:
            dcts[s] = stored.empty(s)
            methods[f"dct 1/{s}"] = stored.decoder(s, dcts[s], pool)
            view = LevelView(slide, 0, scale=float(s))
            vw, vh = view.dimensions
            views[s] = np.zeros((vh, vw, 3), np.uint8)
            methods[f"view {s}"] = (lambda view=view, out=views[s], vw=vw, vh=vh:
                                    slide.run(view.jobs(0, 0, vw, vh, out)))
        log(f"{path.name}: {lw}×{lh}, stored tiles {stored.tw}×{stored.th} ({len(stored.datas)}), "
            f"{args.threads} thread(s); warm-up")
        for fn in methods.values():
            fn()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
        for r in range(args.repeats):
            for name, fn in methods.items():
                runs[name].append(timed(fn))
            log(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{n} {v[-1]['wall_s']:.2f} s" for n, v in runs.items()))
        for name, v in runs.items():
            walls = [x["wall_s"] for x in v]
            median = statistics.median(walls)
            report["speed"][name] = {"runs": v, "median_s": median, "min_s": min(walls), "max_s": max(walls),
                                     "level0_mp_per_s": level_mp / median,
                                     "cpu_cores": statistics.median(x["cpu_s"] / x["wall_s"] for x in v),
                                     "median_cpu_s": statistics.median(x["cpu_s"] for x in v)}
        speed = report["speed"]
        for s in args.downsamples:  # wall-time ratios, and CPU-second ratios (which other processes hardly move)
            for name in (f"dct 1/{s}", f"view {s}"):
                speed[name]["speedup_vs_full"] = speed["full"]["median_s"] / speed[name]["median_s"]
                speed[name]["cpu_speedup_vs_full"] = speed["full"]["median_cpu_s"] / speed[name]["median_cpu_s"]
            speed[f"dct 1/{s}"]["speedup_vs_view"] = speed[f"view {s}"]["median_s"] / speed[f"dct 1/{s}"]["median_s"]

        # Pixels and keep decisions, on the view's floor(W/s) × floor(H/s).
        for s in args.downsamples:
            vh, vw = views[s].shape[:2]
            images = {"dct": dcts[s][:vh, :vw], "view": views[s], "box": box_mean(full, s, vh, vw)}
            pairs = (("dct", "view"), ("dct", "box"), ("view", "box"))
            report["pixels"][str(s)] = {f"{a}-{b}": pixel_diff(images[a], images[b]) for a, b in pairs}
            keep: dict[str, Any] = {}
            for t in args.grid_tiles:
                if t > min(vw, vh):
                    continue
                ratios = {k: ops.white_ratio(im, t, t, threads=args.threads) for k, im in images.items()}
                keep[str(t)] = {f"{a}-{b}": keep_diff(ratios[a], ratios[b], args.max_white) for a, b in pairs}
                keep[str(t)]["glass_measured"] = float((ratios["view"] > args.max_white).mean())
                keep[str(t)]["near_threshold"] = int((np.abs(ratios["view"] - args.max_white) < NEAR).sum())
            report["keep"][str(s)] = keep
            log(f"downsample {s}: compared")
    finally:
        slide.close()
        if pool is not None:
            pool.shutdown()
    report["load_average_end"] = load_average()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, json.dumps(report, indent=1).encode())
    print_table(report, args, path, lw, lh)
    return 0


def print_table(report: dict[str, Any], args: argparse.Namespace, path: Path, lw: int, lh: int) -> None:
    m = report["machine"]
    info = report["slide"]
    print(f"{path.name}: level 0 {lw}×{lh}, {info.get('compression')} tiles {info.get('tile_width')}×"
          f"{info.get('tile_height')} ({'RGB' if info['jpeg_rgb'] else 'YCbCr'}, {info['stored_bits_per_pixel']:.2f} "
          f"bits/pixel); {m['cores']} cores ({m['cpu']}), GPU {m['gpu']}, {m['jpeg']}; {args.threads} thread(s) for "
          "every method")
    print(f"\n{'speed':<10}{'median s':>9}{'min-max s':>14}{'MP/s L0':>9}{'× full':>8}{'× view':>8}{'cpu s':>7}"
          f"{'cpu × full':>11}{'cpu':>6}{'others':>8}")
    for name, r in report["speed"].items():
        others = statistics.median(x["others_cores"] or 0 for x in r["runs"])
        vs_view = f"{r['speedup_vs_view']:.2f}" if "speedup_vs_view" in r else ""
        print(f"{name:<10}{r['median_s']:>9.3f}{r['min_s']:>7.3f}–{r['max_s']:<6.3f}{r['level0_mp_per_s']:>9.1f}"
              f"{r.get('speedup_vs_full', 1.0):>8.2f}{vs_view:>8}{r['median_cpu_s']:>7.2f}"
              f"{r.get('cpu_speedup_vs_full', 1.0):>11.2f}{r['cpu_cores']:>6.2f}{others:>8.2f}")
    print(f"\n{'pixels':<6}{'pair':<10}" + "".join(f"{c + ' max/mean/p99':>20}" for c in CHANNELS))
    for s, pairs in report["pixels"].items():
        for pair, d in pairs.items():
            print(f"{s:<6}{pair:<10}" + "".join(f"{d[c]['max']:>9d} /{d[c]['mean']:6.2f} /{d[c]['p99']:>3d}"
                                                for c in CHANNELS))
    print(f"\n{'keep':<6}{'tile':<6}{'pair':<10}{'differ':>14}{'max |Δratio|':>14}{'max dist':>10}{'glass':>7}"
          f"{'near':>6}")
    for s, grids in report["keep"].items():
        for t, pairs in grids.items():
            for pair, d in pairs.items():
                if not isinstance(d, dict):
                    continue
                print(f"{s:<6}{t:<6}{pair:<10}{d['differ']:>7d} / {d['tiles']:<5d}{d['max_abs_ratio_diff']:>14.4f}"
                      f"{d['differing_max_distance_from_threshold']:>10.4f}{pairs['glass_measured']:>7.2f}"
                      f"{pairs['near_threshold']:>6d}")
    print(f"(max dist: the largest distance from max_white of a differing tile's ratios; glass: share of the view's "
          f"tiles not kept; near: view tiles within {NEAR} of max_white)")
    print(f"\nJSON {args.json}")


if __name__ == "__main__":
    sys.exit(main())
