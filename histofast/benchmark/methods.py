"""The timed methods of ``histofast bench``, each a function that runs once and says what it covered
(``Work``): the seed's recipe, the JPEG decode limit, ``tile_grid``, ``iter_tiles``, the two-pass way, and
the peers (cuCIM, tiffslide: other readers scored by the recipe's OpenCV white-ratio rule)."""
from __future__ import annotations

import importlib.metadata
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..augment import Augment
from ..io import open_slide
from ..io.level import select_level
from ..io.tiles import TILES_PER_JOB
from ..ops import DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER, IMAGENET_MEAN, IMAGENET_STD
from ..tiling import iter_tiles, tile_grid

RESAMPLED_MPP = 2  # the resampled method tiles at this many times level 0's µm per pixel (0.5 on a 40× scan)
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



def white_ratio(rgb: np.ndarray) -> float:
    """The recipe's white fraction of one RGB tile: OpenCV HSV, ``cv2.inRange`` on the paper's bounds, mean."""
    import cv2

    return float((cv2.inRange(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), HSV_LOWER, HSV_UPPER) > 0).mean())


def grid_locations(tile: int, stride: int, rows: list[int], cols: int) -> list[tuple[int, int]]:
    """Level-0 (x, y) of the grid tiles on ``rows``, row by row: what the recipe and the peers read."""
    return [(j * stride, i * stride) for i in rows for j in range(cols)]


def _scored(ratios: Iterable[float], rows: int, area: int) -> Work:
    """``Work`` of a method that scored whole grid rows with ``white_ratio`` (ratios in grid order)."""
    ratio = np.fromiter(ratios, np.float64).reshape(rows, -1)
    return Work(ratio.size, area, int((ratio <= MAX_WHITE).sum()), {"white_ratio": ratio})


def recipe(path: Path, tile: int, stride: int, rows: list[int], cols: int, area: int) -> Callable[[], Work]:
    """The seed's loop: one OpenSlide read per grid tile, OpenCV HSV + inRange, mean (``white_ratio``), one thread."""

    def run() -> Work:
        import openslide

        slide = openslide.OpenSlide(os.fspath(path))
        try:
            return _scored((white_ratio(np.asarray(slide.read_region(xy, 0, (tile, tile)))[..., :3])
                            for xy in grid_locations(tile, stride, rows, cols)), len(rows), area)
        finally:
            slide.close()

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
        with open_slide(path, threads=threads) as slide:
            grid = tile_grid(slide, tile, stride, max_white=MAX_WHITE)
        return Work(grid.white_ratio.size, area, len(grid), {"white_ratio": grid.white_ratio})

    return run


def skip_background(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    """tile_grid reading a low-resolution level first and decoding only where it may hold a kept tile."""
    def run() -> Work:
        with open_slide(path, threads=threads) as slide:
            grid = tile_grid(slide, tile, stride, max_white=MAX_WHITE, skip_background=True)
        return Work(grid.white_ratio.size, area, len(grid), {"white_ratio": grid.white_ratio,
                                                             "skipped": float(grid.skipped.mean())})

    return run


def resampled(path: Path, tile: int, stride: int, threads: int, area: int,
              resample: str = "triangle") -> Callable[[], Work]:
    """tile_grid at twice level 0's µm per pixel: level 0 decoded and resampled (``mpp=``; by ``resample``), the grid
    in view pixels. Credited with level 0's area, the pixels it decodes."""
    def run() -> Work:
        with open_slide(path, threads=threads) as slide:
            grid = tile_grid(slide, tile, stride, mpp=RESAMPLED_MPP * slide.mpp, max_white=MAX_WHITE,
                             resample=resample)
        return Work(grid.white_ratio.size, area, len(grid), {"white_ratio": grid.white_ratio,
                                                             "resample": grid.resample})

    return run


def dct(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    """``resampled`` with ``resample="dct"``: level 0 decoded at 1/2 by libjpeg's DCT scaling."""
    return resampled(path, tile, stride, threads, area, "dct")


def resampled_unavailable(path: Path, method: str = "resampled") -> str | None:
    """Why the slide cannot be tiled at ``RESAMPLED_MPP`` × level 0's µm per pixel from level 0 resampled (``method``
    "resampled") or decoded at 1/2 by DCT scaling ("dct"), if so."""
    with open_slide(path) as slide:
        if slide.mpp is None:
            return "the slide has no µm-per-pixel metadata"
        view = select_level(slide, mpp=RESAMPLED_MPP * slide.mpp)
        if view.level != 0 or view.scale == 1.0:
            return f"level {view.level} stores {RESAMPLED_MPP}× level 0's µm per pixel: nothing to resample"
        if method == "dct" and RESAMPLED_MPP not in slide.dct_scales(0):
            return "level 0 is not JPEG tiles read by the fast path: no DCT scaling"
    return None


def dicom(path: Path, tile: int, stride: int, threads: int, area: int, backend: str = "auto") -> Callable[[], Work]:
    """tile_grid on a DICOM WSI series (``path``: one of its files), by histofast's fast path or (``backend``
    "openslide") through OpenSlide."""
    def run() -> Work:
        with open_slide(path, threads=threads, backend=backend) as slide:
            grid = tile_grid(slide, tile, stride, max_white=MAX_WHITE)
        return Work(grid.white_ratio.size, area, len(grid), {"white_ratio": grid.white_ratio})

    return run


def dicom_openslide(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    return dicom(path, tile, stride, threads, area, "openslide")


def scan_and_cut(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        with open_slide(path, threads=threads) as slide:
            stream = iter_tiles(slide, tile, stride, max_white=MAX_WHITE, **_cut_options())
            tiles, batches = _consume(stream)
        return Work(stream.grid.white_ratio.size, area, tiles, {"batches": batches})

    return run


def two_pass(path: Path, tile: int, stride: int, threads: int, area: int) -> Callable[[], Work]:
    def run() -> Work:
        with open_slide(path, threads=threads) as slide:
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


# The peers: other readers of the same slide, timed on the recipe's grid rows with the recipe's white_ratio
# and --threads workers, so their keep decisions can be checked against the recipe's.
PEER_INSTALL = {
    "cucim": "pip install cucim-cu13 (CPU only, without its CUDA libraries: "
             "pip install --no-deps cucim-cu13 lazy-loader)",
    "tiffslide": "pip install tiffslide",
}
PEER_DISTRIBUTIONS = {"cucim": ("cucim-cu12", "cucim-cu13", "cucim"), "tiffslide": ("tiffslide",)}


def cucim(path: Path, tile: int, stride: int, rows: list[int], cols: int, area: int,
          threads: int) -> Callable[[], Work]:
    """cuCIM's batched ``CuImage.read_region``: all the rows' tiles in one call, decoded by ``threads`` workers
    a batch ahead, each batch scored here as it arrives (its arrays view the batch's memory, freed with it)."""

    def run() -> Work:
        from cucim import CuImage

        def ratios() -> Iterator[float]:
            image = CuImage(os.fspath(path))  # alive as long as its batches
            for batch in image.read_region(grid_locations(tile, stride, rows, cols), (tile, tile), 0,
                                           num_workers=threads, batch_size=BATCH_SIZE):
                pixels = np.asarray(batch)
                for rgb in pixels.reshape(-1, tile, tile, pixels.shape[-1]):  # batch_size 1 drops the batch axis
                    yield white_ratio(rgb[..., :3])

        return _scored(ratios(), len(rows), area)

    return run


def tiffslide(path: Path, tile: int, stride: int, rows: list[int], cols: int, area: int,
              threads: int) -> Callable[[], Work]:
    """tiffslide's OpenSlide-compatible ``read_region`` (as arrays), one grid row per job in ``threads`` threads,
    each thread with its own ``TiffSlide``."""

    def run() -> Work:
        from tiffslide import TiffSlide

        local, opened = threading.local(), []

        def row(i: int) -> list[float]:
            slide = getattr(local, "slide", None)
            if slide is None:
                slide = local.slide = TiffSlide(path)
                opened.append(slide)
            return [white_ratio(slide.read_region(xy, 0, (tile, tile), as_array=True)[..., :3])
                    for xy in grid_locations(tile, stride, [i], cols)]

        try:
            with ThreadPoolExecutor(threads) as pool:
                return _scored((r for ratios in pool.map(row, rows) for r in ratios), len(rows), area)
        finally:
            for slide in opened:
                slide.close()

    return run


PEERS: dict[str, Callable[..., Callable[[], Work]]] = {"cucim": cucim, "tiffslide": tiffslide}


def peer_version(name: str) -> str | None:
    """The installed version of a peer's distribution (None when none is installed)."""
    for dist in PEER_DISTRIBUTIONS[name]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def peer_unavailable(name: str, path: Path) -> str | None:
    """Why a peer cannot be timed on ``path`` (not installed, or it cannot open the file); None when it can."""
    try:
        if name == "cucim":
            from cucim import CuImage

            CuImage(os.fspath(path))
        else:
            from tiffslide import TiffSlide

            TiffSlide(path).close()
    except ImportError as e:
        return f"not installed ({e})"
    except Exception as e:  # the peer does not read this file
        return f"cannot open the slide ({type(e).__name__}: {e})"
    return None
