"""Thumbnail-guided tiling (``GridSpec(skip_background=True)``): a low-resolution level, read first, says which
grid tiles cannot be kept, and their stored tiles are never decoded.

A low-resolution pixel is *glass* when its HSV lies well inside the white range (``GLASS_MARGIN`` inside each
bound that is not the channel's end). A grid tile stays a *candidate* (decoded, and decided by the paper's HSV
rule as always) when at least ``SAFETY · (1 - max_white)`` of its footprint there, grown by one pixel on every
side, is not glass (a quarter, at max_white 0.5); the other tiles are decided without decoding: white ratio 1.0,
not kept (``TileGrid.skipped``). A tile skipped wrongly would need at least ``1 - max_white`` of its level pixels
non-white while most thumbnail pixels over it average to clear glass: faint or very sparse tissue. ``histofast
bench`` measures how often that happens (``tile_grid`` with and without the option, decision by decision).

With CLAM's segmentation (``GridSpec(tissue="otsu")``) the tiles it keeps are the candidates, and only they are
decoded: every other tile is decided already."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..io.level import LevelView
from ..specs import GridSpec

GLASS_MARGIN = (0, 12, 16)  # HSV levels inside the white range that a thumbnail pixel needs to count as glass
# A candidate's grown footprint holds at least this share of the non-white pixels a kept tile needs
# (``1 - max_white``) in non-glass thumbnail pixels: half, a margin for what a glass pixel's average hides.
SAFETY = 0.5
MIN_THUMB_PIXELS = 8  # thumbnail pixels per tile side at least: a coarser level says too little about a tile
MIN_THUMB_RATIO = 4  # the thumbnail level is this much coarser than the level decoded at least (1/16 of its area)
MAX_THUMB_PIXELS = 64 << 20  # a thumbnail level larger than this is not read: the grid is scanned exactly
CELL = 64  # view pixels per side of the cells that record which pixels candidates need (rounded outwards)


@dataclass(frozen=True)
class Background:
    """Which tiles of a grid the thumbnail leaves as candidates, and which stored tiles they need.

    Attributes:
        candidates: bool (rows, cols) of the grid: True where a tile may be kept (it is decoded and scored).
        level: the slide level read as the thumbnail (the view's own when the candidates were given).
    """

    candidates: np.ndarray
    level: int
    _needed: np.ndarray  # int32 (cells_y + 1, cells_x + 1): summed-area table of the cells candidates need
    _scale: float  # level pixels per view pixel

    def skip(self, x0: int, y0: int, x1: int, y1: int) -> bool:
        """Whether the level rectangle [x0, x1) × [y0, y1) holds no pixel a candidate needs (``io.slide.Skip``)."""
        s, n = self._scale * CELL, self._needed
        cy0, cx0 = min(int(y0 / s), n.shape[0] - 1), min(int(x0 / s), n.shape[1] - 1)
        cy1, cx1 = min(math.ceil(y1 / s), n.shape[0] - 1), min(math.ceil(x1 / s), n.shape[1] - 1)
        return n[cy1, cx1] - n[cy0, cx1] - n[cy1, cx0] + n[cy0, cx0] == 0


def find_background(view: LevelView, spec: GridSpec, shape: tuple[int, int], margin: int = 0,
                    candidates: np.ndarray | None = None) -> Background | None:
    """The candidates of a grid of ``shape`` (rows, cols) over ``view``, from the coarsest level with at least
    ``MIN_THUMB_PIXELS`` pixels per tile side; ``margin``: view pixels beyond each tile that a candidate's reads
    reach (an augmentation's shift). None when the slide has no such level ``MIN_THUMB_RATIO`` times coarser than
    the one the view decodes, or every tile is kept anyway (``max_white`` 1). ``candidates``: bool ``shape``, the
    tiles kept already (by CLAM's segmentation): they are the candidates, and no thumbnail is read."""
    slide = view.slide
    resampling = 0 if view.scale == 1.0 else 2  # a resampled view pixel reads level pixels up to one view pixel out
    if candidates is not None:
        return Background(candidates, view.level, _needed(candidates, spec, view.dimensions, margin + resampling),
                          view.scale)
    if spec.max_white >= 1:  # every tile is kept, glass too: nothing to skip
        return None
    tile0 = spec.tile_size * view.downsample  # a tile's side in level-0 pixels
    coarser = [k for k, d in enumerate(slide.level_downsamples)
               if d * MIN_THUMB_PIXELS <= tile0 and d >= MIN_THUMB_RATIO * slide.level_downsamples[view.level]
               and slide.level_dimensions[k][0] * slide.level_dimensions[k][1] <= MAX_THUMB_PIXELS]
    if not coarser:
        return None
    level = coarser[-1]
    w, h = slide.level_dimensions[level]
    maybe = ~_glass(slide.read_level_region(level, (0, 0), (w, h)), spec)
    table = _summed(maybe)
    f = view.downsample / slide.level_downsamples[level]  # thumbnail pixels per view pixel
    rows, cols = shape
    y0, x0 = np.arange(rows) * spec.stride, np.arange(cols) * spec.stride
    ty0, ty1 = _span(y0 * f, (y0 + spec.tile_size) * f, h)
    tx0, tx1 = _span(x0 * f, (x0 + spec.tile_size) * f, w)
    count = (table[ty1][:, tx1] - table[ty0][:, tx1] - table[ty1][:, tx0] + table[ty0][:, tx0])
    area = (ty1 - ty0)[:, None] * (tx1 - tx0)[None, :]
    candidates = count >= SAFETY * (1 - spec.max_white) * area
    return Background(candidates, level, _needed(candidates, spec, view.dimensions, margin + resampling),
                      view.scale)


def _glass(rgb: np.ndarray, spec: GridSpec) -> np.ndarray:
    """bool (h, w): pixels whose HSV lies ``GLASS_MARGIN`` inside the white range (a bound at a channel's end
    stays there)."""
    hsv = ops.rgb_to_hsv(rgb)
    glass = np.ones(rgb.shape[:2], bool)
    for c, (lo, hi, top, m) in enumerate(zip(spec.hsv_lower, spec.hsv_upper, ops.HSV_TOP, GLASS_MARGIN)):
        lo, hi = (lo if lo == 0 else lo + m), (hi if hi == top else hi - m)
        glass &= (hsv[..., c] >= lo) & (hsv[..., c] <= hi)
    return glass


def _summed(mask: np.ndarray) -> np.ndarray:
    """int32 (h + 1, w + 1) summed-area table of ``mask``: ``t[y, x]`` counts ``mask[:y, :x]``."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)
    table[1:, 1:] = mask.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    return table


def _span(start: np.ndarray, stop: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnail index ranges [a, b) covering [start, stop) grown by one pixel on each side, within 0..size."""
    return (np.clip(np.floor(start).astype(np.int64) - 1, 0, size),
            np.clip(np.ceil(stop).astype(np.int64) + 1, 0, size))


def _needed(candidates: np.ndarray, spec: GridSpec, size: tuple[int, int], margin: int) -> np.ndarray:
    """Summed-area table over cells of ``CELL`` view pixels: 1 where a candidate tile, grown by ``margin``, lies."""
    width, height = size
    cells = np.zeros((-(-height // CELL) + 1, -(-width // CELL) + 1), np.int32)  # a difference array, then summed
    i, j = np.nonzero(candidates)
    y0, x0 = i * spec.stride - margin, j * spec.stride - margin
    y1, x1 = y0 + spec.tile_size + 2 * margin, x0 + spec.tile_size + 2 * margin
    cy0, cx0 = np.clip(y0 // CELL, 0, cells.shape[0] - 1), np.clip(x0 // CELL, 0, cells.shape[1] - 1)
    cy1, cx1 = np.clip(-(-y1 // CELL), 0, cells.shape[0] - 1), np.clip(-(-x1 // CELL), 0, cells.shape[1] - 1)
    for dy, dx, sign in ((cy0, cx0, 1), (cy0, cx1, -1), (cy1, cx0, -1), (cy1, cx1, 1)):
        np.add.at(cells, (dy, dx), sign)
    return _summed(cells.cumsum(0).cumsum(1)[:-1, :-1] > 0)
