"""``tile_grid`` and ``iter_tiles``: one scan of a slide level. On the CPU white pixels are counted as they
are decoded (``histofast.tiling.counts``: the paper's OpenCV HSV test, exactly); ``tile_grid`` keeps no
pixels, ``iter_tiles`` reads the level in bands (``histofast.io.bands``) and cuts and augments each band's
kept tiles before the next is drawn. On a GPU each band is scored by ``ops.white_ratio`` on the device.
With ``tissue="otsu"`` CLAM's segmentation (``histofast.tiling.tissue``) decides which tiles are kept before the
scan, which still measures every white ratio."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import numpy as np

from .. import ops
from ..checks import check_count, check_device
from ..errors import SmallerThanTileError
from ..io import Slide, opened
from ..io.bands import Band, Rows, SlideRows, read_bands
from ..io.decode import check_decode, open_rows
from ..io.level import LevelView, select_level
from ..specs import BatchFormat, GridSpec
from .background import find_background
from .buffers import to_device
from .counts import WhiteCounts
from .cut import TileBatch, cut, tile_format
from .grid import TileGrid
from .tissue import segment_tissue


def tile_grid(
    slide: Slide | str | os.PathLike,
    tile_size: int = GridSpec.tile_size,
    stride: int | None = GridSpec.stride,
    *,
    level: int | None = GridSpec.level,
    mpp: float | None = GridSpec.mpp,
    magnification: float | None = GridSpec.magnification,
    hsv_lower: Sequence[int] = GridSpec.hsv_lower,
    hsv_upper: Sequence[int] = GridSpec.hsv_upper,
    max_white: float = GridSpec.max_white,
    skip_background: bool = GridSpec.skip_background,
    tissue: str = GridSpec.tissue,
    resample: str = GridSpec.resample,
    device: str = "cpu",
    decode: str = "auto",
    progress: Any = None,
) -> TileGrid:
    """Score every tile of a grid over one slide level by its white (background) fraction.

    For each tile the keep decision equals the paper's recipe on that tile read with OpenSlide:
    ``(cv2.inRange(cv2.cvtColor(tile, cv2.COLOR_RGB2HSV), hsv_lower, hsv_upper) > 0).mean() <= max_white``;
    with ``tissue="otsu"``, CLAM's (``histofast.tiling.tissue``), the white fractions measured all the same.
    Each pixel of the level is decoded once whatever the overlap: on the CPU tile by tile, its white pixels
    counted in the decoding thread and the pixels dropped (memory: one stored tile per worker); on a GPU in
    bands scored on the device.

    Args:
        slide: an open ``Slide`` or a path.
        tile_size, stride, level, mpp, magnification, hsv_lower, hsv_upper, max_white, skip_background, tissue,
            resample: the grid, as ``histofast.GridSpec`` takes them (grid pixels; stride defaults to tile_size; only
            whole tiles, origin (0, 0); at most one of level / mpp / magnification, default level 0;
            ``skip_background``: decode only what a low-resolution level says may be tissue, not exact, see
            ``GridSpec``; ``tissue``: "hsv", the paper's rule, or "otsu", CLAM's segmentation; ``resample``:
            "triangle" or "dct", how a view between levels is made).
        device: "cpu" or "cuda[:i]": where ``white_ratio`` runs (and, decoding on the GPU, the pixels land).
        decode: "auto" (nvImageCodec on the GPU when ``device`` is CUDA, ``pip install 'histofast[gpu]'``
            is installed and it reads the level; else the CPU decoders), "cpu", "gpu" (an error when it
            cannot be had) or "nvimgcodec-cpu" (nvImageCodec's CPU backend). ``grid.decoder`` says which ran.
        progress: an optional tqdm-like object; ``update(n)`` is called with tile rows done.
    Returns:
        The ``TileGrid``.
    Raises:
        SlideError: the level is smaller than one tile (``histofast tile`` reports such a slide as 0 tiles
            with a warning instead), or the slide cannot be read.
    """
    spec = GridSpec(tile_size, stride, level, mpp, magnification, hsv_lower, hsv_upper, max_white, skip_background,
                    tissue, resample)
    return scan_grid(slide, spec, device=device, decode=decode, progress=progress)


def scan_grid(slide: Slide | str | os.PathLike, grid: GridSpec, *, device: str = "cpu", decode: str = "auto",
              progress: Any = None) -> TileGrid:
    """``tile_grid`` for a ``GridSpec``."""
    with opened(slide) as s:
        view, rows, score = _scorer(s, grid, device, decode, deferred=True)
        try:
            if score.counts is not None:  # on the CPU: decoded pixels are counted and dropped, no bands
                _scan(view, score, progress)
            else:
                for band in read_bands(view, score.grid.tile_size, score.grid.stride, rows=rows):
                    score(band)
                    if progress is not None:
                        progress.update(len(band.rows))
            score.finish()
        finally:
            rows.close()
        return score.grid


def _scan(view: LevelView, score: "_Score", progress: Any) -> None:
    """Fill the grid from white pixels counted as the view's rows are decoded (``LevelView.scan_jobs``): each
    pixel decoded once, into a per-thread scratch tile, never stored; rows filled in order as they complete."""
    grid, counts = score.grid, score.counts
    n_rows = grid.white_ratio.shape[0]
    jobs = view.scan_jobs((n_rows - 1) * grid.stride + grid.tile_size, counts)
    slide = view.slide
    futures = [(rows, slide.pool.submit(job)) for rows, job in jobs] if slide.threads > 1 else None
    done = 0
    try:
        for k, (rows, job) in enumerate(jobs):
            if futures is None:
                job()
            else:
                futures[k][1].result()
            if k + 1 < len(jobs) and jobs[k + 1][0] == rows:
                continue  # other jobs of these rows are still running
            ready = min(n_rows, max(0, (rows - grid.tile_size) // grid.stride + 1))  # tile rows wholly above
            if ready > done:
                score.fill(slice(done, ready), counts.ratio(range(done, ready)))
                if progress is not None:
                    progress.update(ready - done)
                done = ready
        if done < n_rows:  # rows below the last decoded ones (glass left white by skip_background)
            score.fill(slice(done, n_rows), counts.ratio(range(done, n_rows)))
            if progress is not None:
                progress.update(n_rows - done)
    finally:
        for _, future in futures or ():  # a failure stops what has not started
            future.cancel()


def iter_tiles(
    slide: Slide | str | os.PathLike,
    tile_size: int = GridSpec.tile_size,
    stride: int | None = GridSpec.stride,
    *,
    level: int | None = GridSpec.level,
    mpp: float | None = GridSpec.mpp,
    magnification: float | None = GridSpec.magnification,
    hsv_lower: Sequence[int] = GridSpec.hsv_lower,
    hsv_upper: Sequence[int] = GridSpec.hsv_upper,
    max_white: float = GridSpec.max_white,
    skip_background: bool = GridSpec.skip_background,
    tissue: str = GridSpec.tissue,
    resample: str = GridSpec.resample,
    device: str = "cpu",
    decode: str = "auto",
    **options: Any,
) -> "TileIterator":
    """``tile_grid`` and ``TileGrid.tiles`` in one pass: each band is decoded once, scored, and its
    kept tiles cut (and augmented) before the next band is drawn.

    Arguments are checked (and a path opened) at the call, before anything is decoded.

    Args:
        slide, tile_size, stride, level, mpp, magnification, hsv_lower, hsv_upper, max_white, skip_background, tissue,
            resample, device, decode: as for ``tile_grid``.
        options: ``epoch`` (the augmentation epoch, default 0) and the batch format, as ``histofast.BatchFormat``
            takes it, with the plain tiles as defaults (``TILE_FORMAT``: uint8 NHWC, no normalisation):
            batch_size: tiles per batch (default 64; the last batch may be smaller).
            augment: an ``Augment`` (tile k of the epoch gets draw k), or None for the plain tiles.
            out_dtype, layout, mean, std: as for ``ops.augment``.
    Returns:
        A ``TileIterator``: iterate it for ``TileBatch``es of the kept tiles in row-major order, on
        ``device``; its ``grid`` is complete once the batches are exhausted; its ``decoder`` says what decodes.
    Raises:
        SlideError: as ``tile_grid``, at the call (a level smaller than one tile, an unreadable slide).
    """
    spec = GridSpec(tile_size, stride, level, mpp, magnification, hsv_lower, hsv_upper, max_white, skip_background,
                    tissue, resample)
    batch, epoch = tile_format(options)
    return scan_tiles(slide, spec, batch, epoch=epoch, device=device, decode=decode)


def scan_tiles(slide: Slide | str | os.PathLike, grid: GridSpec, batch: BatchFormat, *, epoch: int = 0,
               device: str = "cpu", decode: str = "auto") -> "TileIterator":
    """``iter_tiles`` for a ``GridSpec`` and a ``BatchFormat`` (``augment="preset"``: none, there is no preset)."""
    check_count(epoch, "epoch", 0)
    batch = batch.resolved(None)
    source = opened(slide)
    try:
        reach = batch.augment.reach(grid.tile_size) if batch.augment is not None else 0
        view, rows, score = _scorer(source.slide, grid, device, decode, margin=reach)
    except BaseException:
        source.__exit__()
        raise

    def batches() -> Iterator[TileBatch]:
        with source:
            try:
                yield from cut(view, score.grid, score, batch, epoch, device=score.device, rows=rows)  # resolved
            finally:
                rows.close()

    return TileIterator(score.grid, batches(), rows.name)


class TileIterator:
    """The batches of ``iter_tiles``; ``grid`` fills in as bands are scored (rows not yet reached read 1.0);
    ``decoder`` names what decodes the pixels (as ``TileGrid.decoder``)."""

    def __init__(self, grid: TileGrid, batches: Iterator[TileBatch], decoder: str = "") -> None:
        self.grid = grid
        self.decoder = decoder
        self._batches = batches

    def __iter__(self) -> "TileIterator":
        return self

    def __next__(self) -> TileBatch:
        return next(self._batches)

    def close(self) -> None:
        """Stop early: wait for decodes in flight and close a slide opened from a path."""
        self._batches.close()


def _band_region(band: Band, tile_size: int, stride: int, device: str) -> Any:
    """The band's rows its tile rows cover, on ``device``."""
    top = band.rows.start * stride - band.y0
    bottom = (band.rows.stop - 1) * stride + tile_size - band.y0
    return to_device(band.pixels[top:bottom], device)


def _band_ratio(band: Band, tile_size: int, stride: int, lower: Any, upper: Any, device: str,
                threads: int) -> np.ndarray:
    """White ratio of the band's tile rows: float32 (len(band.rows), cols), on the host."""
    ratio = ops.white_ratio(_band_region(band, tile_size, stride, device), tile_size, stride, lower, upper,
                            threads=threads)
    return ratio if isinstance(ratio, np.ndarray) else ratio.cpu().numpy()


class _Score:
    """``score(band)`` fills the band's rows of the grid's white ratio: from white pixels counted as they were
    decoded (``counts``, on the CPU), or by ``ops.white_ratio`` over the band. ``deferred`` on a GPU, it fills a
    device copy instead and ``finish`` brings the whole grid back once (no host round trip per band)."""

    def __init__(self, grid: TileGrid, spec: GridSpec, device: str, deferred: bool, threads: int,
                 counts: WhiteCounts | None = None) -> None:
        self.grid, self.ratio, self.device = grid, grid.white_ratio, device
        self.skipped = grid.skipped  # decided by the thumbnail (skip_background), or None
        self.lower, self.upper = spec.hsv_lower, spec.hsv_upper
        self.tile_size, self.stride = grid.tile_size, grid.stride
        self.threads, self.counts = threads, counts
        self._on_device = None
        if deferred and device != "cpu":
            import torch

            self._on_device = torch.ones(self.ratio.shape, dtype=torch.float32, device=device)

    def __call__(self, band: Band) -> None:
        rows = slice(band.rows.start, band.rows.stop)
        if self.counts is not None:
            self.fill(rows, self.counts.ratio(band.rows))
        elif self._on_device is None:
            self.fill(rows, _band_ratio(band, self.tile_size, self.stride, self.lower, self.upper, self.device,
                                        self.threads))
        else:  # finish() brings these rows back
            ops.white_ratio(_band_region(band, self.tile_size, self.stride, self.device), self.tile_size,
                            self.stride, self.lower, self.upper, out=self._on_device[rows])

    def fill(self, rows: slice, ratio: np.ndarray) -> None:
        """Set tile rows ``rows`` of the grid's white ratio; the tiles the thumbnail decided stay white (1.0),
        whatever was decoded around them."""
        self.ratio[rows] = ratio
        if self.skipped is not None:
            self.ratio[rows][self.skipped[rows]] = 1.0

    def finish(self) -> None:
        """Every band is scored: bring a deferred grid's ratios back to the host."""
        if self._on_device is not None:
            self.fill(slice(None), self._on_device.cpu().numpy())


def _scorer(slide: Slide, spec: GridSpec, device: str, decode: str, deferred: bool = False,
            margin: int = 0) -> tuple[LevelView, Rows, _Score]:
    """The view, what decodes its rows (close it) and the ``_Score`` of an unscored grid (white ratio 1.0);
    the view's size and ``device``/``decode`` are checked before anything is decoded. With
    ``spec.skip_background`` the view leaves the stored tiles of no candidate white (``margin``: view pixels
    beyond a tile that its cut reads); with ``spec.tissue == "otsu"`` the grid's keep is CLAM's segmentation's,
    decided here (and the candidates are the tiles it keeps)."""
    view = select_level(slide, *spec.view_args())
    width, height = view.dimensions
    tile_size, stride = spec.tile_size, spec.stride
    if tile_size > min(width, height):
        raise SmallerThanTileError(slide.path, view.level, (width, height), tile_size)
    device = check_device(device)
    check_decode(decode, device)  # before a thumbnail or segmentation level is read
    shape = ops.grid_shape(height, width, tile_size, stride)
    grid = TileGrid(os.fspath(slide.path), view.level, tile_size, stride, np.ones(shape, np.float32), spec.max_white,
                    view.downsample, view.scale, view.mpp, resample=view.resample)
    segmentation = segmented = skipped = None
    if spec.tissue == "otsu":
        segmentation = segment_tissue(slide)
        segmented = segmentation.keep_grid(grid)
    if spec.skip_background:
        background = find_background(view, spec, shape, margin, candidates=segmented)
        skipped = np.zeros(shape, bool) if background is None else ~background.candidates
        if background is not None:
            view = dataclasses.replace(view, skip=background.skip)
    rows = open_rows(view, decode, device)  # checks decode= first
    grid = dataclasses.replace(grid, decoder=rows.name, skipped=skipped, segmented=segmented,
                               segmentation=segmentation)
    counts = None
    if device == "cpu" and isinstance(rows, SlideRows) and WhiteCounts.fits(view.dimensions, tile_size, stride):
        counts = WhiteCounts(view.dimensions, tile_size, stride, spec.hsv_lower, spec.hsv_upper)  # counted as decoded
        rows.on_part = counts
    try:
        return view, rows, _Score(grid, spec, device, deferred, slide.threads, counts)
    except BaseException:
        rows.close()
        raise
