"""The timed methods of ``histofast bench``, each a function that runs once and says what it covered
(``Work``): the seed's recipe, the JPEG decode limit, ``tile_grid``, ``iter_tiles`` and the two-pass way."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..augment import Augment
from ..io import open_slide
from ..io.tiff import TILES_PER_JOB
from ..ops import DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER, IMAGENET_MEAN, IMAGENET_STD
from ..tiling import iter_tiles, tile_grid

MAX_WHITE = 0.5
HSV_LOWER, HSV_UPPER = DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER  # the paper's bounds, as tile_grid's defaults
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
BATCH_SIZE = 64
DECODE_TILES_PER_JOB = TILES_PER_JOB  # (b): stored tiles per pool job, as histofast's tiled-TIFF reader


@dataclass
class Work:
    """What one run of a method covered.

    tiles: grid tiles scored (for the decode limit: stored tiles decoded); kept: tiles delivered as pixels;
    area: level-0 pixels credited (scored rows / grid rows × W·H; the whole level W·H)."""

    tiles: int
    area: int
    kept: int = 0
    extra: dict = field(default_factory=dict)



def recipe(path: Path, tile: int, stride: int, rows: list[int], area: int) -> Callable[[], Work]:
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


def decode_limit(path: Path, page: Any, threads: int, area: int) -> Callable[[], Work]:
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


def _augment() -> Augment:
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


def scan_grid(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        with open_slide(path, workers=threads) as slide:
            grid = tile_grid(slide, tile, stride, max_white=MAX_WHITE)
        return Work(grid.white_ratio.size, area, len(grid), {"white_ratio": grid.white_ratio})

    return run


def scan_and_cut(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        with open_slide(path, workers=threads) as slide:
            stream = iter_tiles(slide, tile, stride, max_white=MAX_WHITE, **_cut_options())
            tiles, batches = _consume(stream)
        return Work(stream.grid.white_ratio.size, area, tiles, {"batches": batches})

    return run


def two_pass(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        with open_slide(path, workers=threads) as slide:
            grid = tile_grid(slide, tile, stride, max_white=MAX_WHITE)
            tiles, batches = _consume(grid.tiles(slide, **_cut_options()))
        return Work(grid.white_ratio.size, area, tiles, {"batches": batches})

    return run



def have_cv2() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def openslide_reads(path: Path) -> bool:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(os.fspath(path)) is not None
    except Exception:  # OpenSlide missing or the file unreadable
        return False


