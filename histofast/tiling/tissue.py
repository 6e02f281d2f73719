"""CLAM's tissue segmentation (``GridSpec(tissue="otsu")``): the rule CLAM's ``create_patches_fp.py`` applies,
as an alternative to the paper's HSV white ratio, deciding which tiles of the same grid are kept.

From CLAM @ 53e2409d4a8189c682c173382964a85f114f923c (mahmoodlab/CLAM, 2025-04-14; the files read last changed in
d613a3d): ``wsi_core/WholeSlideImage.py`` (``segmentTissue`` with ``use_otsu=True`` and its ``_filter_contours``,
``scaleContourDim``/``scaleHolesDim``, ``_assertLevelDownsamples``, ``process_contour``, ``isInContours``,
``isInHoles``), ``wsi_core/util_classes.py`` (``isInContourV3_Easy``, CLAM's ``contour_fn='four_pt'``) and
``create_patches_fp.py`` (the defaults: ``seg_level=-1``, i.e. ``get_best_level_for_downsample(64)``, level 0 for a
one-level slide; ``mthresh 7``, ``close 4``; ``a_t 100``, ``a_h 16``, ``max_n_holes 8``; ``four_pt``, padding on).

Segmentation (``segment_tissue``), on the whole ``seg_level`` read at once: HSV saturation, median blur of
``mthresh``, Otsu's threshold, a ``close``×``close`` morphological closing, contours with ``RETR_CCOMP``; a
foreground contour is kept when its area less its holes' exceeds ``a_t`` reference patches (512² level-0 pixels,
scaled to the segmentation level), and of its holes the ``max_n_holes`` largest larger than ``a_h`` patches stay;
contours and holes are then scaled to level 0 (truncated to int32), as CLAM stores them.

Keep decision (``Segmentation.keep``), per tile of a grid, with its level-0 corner (x, y) and its level-0 side P:
kept when, for some kept contour whose bounding box holds (x, y) (CLAM walks each contour's box from its corner),
one of the four points (x + P//2 ± s, y + P//2 ± s), s = int(P//2 · 0.5), lies in the contour or on it
(``cv2.pointPolygonTest >= 0``), and the tile's centre (x + P/2, y + P/2) lies strictly inside none of that
contour's holes. P is CLAM's ``patch_size · int(level downsample)`` for a stored level (``tile_footprint``).

The differences from CLAM are where the grid is: histofast's grid starts at the slide's origin and holds whole
tiles only, where CLAM starts a grid at each contour's bounding-box corner (so a position can be listed once per
contour that reaches it) and pads past the slide's edge; a decision here is the one CLAM makes for a patch at the
same corner. A slide without tissue gives no contours (CLAM fails on it), and a segmentation level over 10⁸ pixels
is refused as CLAM refuses it. Transparent pixels read white here, black in CLAM: both have saturation 0.

Every point test is ``cv2.pointPolygonTest``'s answer: the tiles far from a contour's outline are answered from the
contour rasterised at twice the segmentation's resolution, the ones near it by ``cv2.pointPolygonTest`` itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import ops
from ..errors import SlideError
from ..io import Slide

if TYPE_CHECKING:
    from .grid import TileGrid

CLAM_COMMIT = "53e2409d4a8189c682c173382964a85f114f923c"
SEG_DOWNSAMPLE = 64  # create_patches_fp.py: seg_level -1 is get_best_level_for_downsample(64)
MTHRESH = 7  # median blur size of the saturation channel
CLOSE = 4  # morphological closing kernel side (0: none)
A_T = 100  # a tissue contour's area must exceed this many reference patches (after its holes)
A_H = 16  # a hole's area must exceed this many reference patches
MAX_N_HOLES = 8  # the largest holes of a contour considered
REF_PATCH_SIZE = 512  # the reference patch side, level-0 pixels, for a_t and a_h
CENTER_SHIFT = 0.5  # isInContourV3_Easy: the four points at ±(P//2 · 0.5) around the patch centre
MAX_SEG_PIXELS = 1e8  # create_patches_fp.py refuses a segmentation level larger than this
_MARGIN = 2  # raster pixels around a contour's outline whose points are tested by cv2.pointPolygonTest itself


@dataclass(frozen=True, eq=False)
class Segmentation:
    """CLAM's tissue contours of one slide, in level-0 pixels (int32 (N, 1, 2) each, as OpenCV draws them).

    Attributes:
        contours: the kept tissue contours (CLAM's ``contours_tissue``).
        holes: per contour, its kept holes (CLAM's ``holes_tissue``).
        level: the level segmented; scale: its (x, y) level-0 pixels per pixel (CLAM's ``_assertLevelDownsamples``).
        level_downsamples: every level's (x, y) downsample as CLAM estimates it (level-0 size / level size).
    """

    contours: list[np.ndarray]
    holes: list[list[np.ndarray]]
    level: int
    scale: tuple[float, float]
    level_downsamples: tuple[tuple[float, float], ...]

    def keep(self, x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray, patch_size: int) -> np.ndarray:
        """CLAM's decision for the tiles of a lattice: bool (len(y), len(x)), entry [i, j] for the tile whose level-0
        corner is (x[j], y[i]) and whose level-0 side is ``patch_size`` (see the module's docstring)."""
        x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
        keep = np.zeros((len(y), len(x)), bool)
        half = patch_size // 2
        shift = int(patch_size // 2 * CENTER_SHIFT)
        offsets = ((-shift, -shift), (shift, shift), (shift, -shift), (-shift, shift)) if shift > 0 else ((0, 0),)
        cell = max(1.0, min(self.scale) / 2)  # raster pixels: half the segmentation's
        for contour, holes in zip(self.contours, self.holes):
            outline = _Outline(contour, cell)
            bx, by, bw, bh = outline.box
            cols = np.flatnonzero((x >= bx) & (x < bx + bw))  # process_contour: np.arange(start_x, start_x + w, step)
            rows = np.flatnonzero((y >= by) & (y < by + bh))
            if not len(cols) or not len(rows):
                continue
            px, py = np.meshgrid(x[cols], y[rows])  # the tiles' corners
            inside = np.zeros(px.shape, bool)
            for dx, dy in offsets:  # isInContourV3_Easy: one of the four points in the contour or on it
                inside |= outline(px + half + dx, py + half + dy)
            for hole in holes:  # isInHoles: the centre strictly inside one of the contour's holes
                if inside.any():
                    inside[inside] = ~_Outline(hole, cell)(px[inside] + patch_size / 2, py[inside] + patch_size / 2,
                                                           strict=True)
            keep[np.ix_(rows, cols)] |= inside
        return keep

    def keep_grid(self, grid: "TileGrid") -> np.ndarray:
        """``keep`` for the tiles of ``grid`` (its level-0 corners, as ``TileGrid.coords`` rounds them):
        bool (rows, cols)."""
        rows, cols = grid.shape
        return self.keep(_corners(cols, grid.stride, grid.downsample), _corners(rows, grid.stride, grid.downsample),
                         self.tile_footprint(grid.level, grid.scale, grid.tile_size, grid.downsample))

    def tile_footprint(self, level: int, scale: float, tile_size: int, downsample: float) -> int:
        """A tile's level-0 side as CLAM's ``process_contour`` reckons it: ``patch_size · int(downsample)`` with
        the level's downsample as ``_assertLevelDownsamples`` estimates it (x); for a resampled view (``scale`` ≠ 1,
        which CLAM has not), the tile's side times ``downsample`` (level-0 pixels per view pixel), rounded."""
        if scale == 1.0:
            return tile_size * int(self.level_downsamples[level][0])
        return int(round(tile_size * downsample))


def _corners(n: int, stride: int, downsample: float) -> np.ndarray:
    """Level-0 corners of ``n`` tiles at ``stride`` view pixels, as ``TileGrid.coords`` rounds them."""
    return np.floor(np.arange(n, dtype=np.int64) * stride * downsample + 0.5).astype(np.int64)


def clam_level_downsamples(slide: Slide) -> tuple[tuple[float, float], ...]:
    """CLAM's ``_assertLevelDownsamples``: each level's (x, y) downsample, level-0 size over the level's size."""
    w0, h0 = slide.level_dimensions[0]
    return tuple((w0 / float(w), h0 / float(h)) for w, h in slide.level_dimensions)


def segment_tissue(slide: Slide, seg_level: int | None = None, *, mthresh: int = MTHRESH, close: int = CLOSE,
                   a_t: float = A_T, a_h: float = A_H, max_n_holes: int = MAX_N_HOLES,
                   ref_patch_size: int = REF_PATCH_SIZE) -> Segmentation:
    """CLAM's ``segmentTissue(use_otsu=True)`` on ``slide`` (an open ``Slide``).

    Args:
        seg_level: the level to segment; None: CLAM's default, ``get_best_level_for_downsample(64)`` (level 0 for a
            slide of one level).
        mthresh, close, a_t, a_h, max_n_holes, ref_patch_size: CLAM's parameters, at CLAM's defaults.
    Returns:
        The ``Segmentation``: contours and holes in level-0 pixels.
    Raises:
        SlideError: the segmentation level has more than 10⁸ pixels (CLAM's limit), or cannot be read.
    """
    import cv2

    level = slide.get_best_level_for_downsample(SEG_DOWNSAMPLE) if seg_level is None else slide.check_level(seg_level)
    w, h = slide.level_dimensions[level]
    if w * h > MAX_SEG_PIXELS:
        raise SlideError(slide.path, f"level {level} ({w}×{h} pixels), the level CLAM's segmentation reads "
                                     f"(tissue='otsu'), is larger than {MAX_SEG_PIXELS:.0e} pixels")
    downsamples = clam_level_downsamples(slide)
    scale = downsamples[level]
    hsv = ops.rgb_to_hsv(slide.read_level_region(level, (0, 0), (w, h)))  # OpenCV's HSV, bit for bit
    med = cv2.medianBlur(np.ascontiguousarray(hsv[:, :, 1]), mthresh)
    _, mask = cv2.threshold(med, 0, 255, cv2.THRESH_OTSU + cv2.THRESH_BINARY)
    if close > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((close, close), np.uint8))
    area = int(ref_patch_size ** 2 / (scale[0] * scale[1]))  # the reference patch at this level
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    tissue: list[np.ndarray] = []
    holes: list[list[np.ndarray]] = []
    if hierarchy is not None:  # CLAM fails on a mask without contours; here it has no tissue
        parent = hierarchy[0][:, 3]
        for i in np.flatnonzero(parent == -1):
            children = np.flatnonzero(parent == i)
            net = cv2.contourArea(contours[i]) - np.array([cv2.contourArea(contours[k]) for k in children]).sum()
            if net == 0 or not a_t * area < net:
                continue
            kept = sorted((contours[k] for k in children), key=cv2.contourArea, reverse=True)[:max_n_holes]
            tissue.append(contours[i])
            holes.append([c for c in kept if cv2.contourArea(c) > a_h * area])
    return Segmentation([np.array(c * scale, dtype="int32") for c in tissue],
                        [[np.array(c * scale, dtype="int32") for c in hs] for hs in holes], level, scale, downsamples)


class _Outline:
    """A contour's point test, ``cv2.pointPolygonTest(contour, (x, y), False) >= 0`` (``> 0`` when ``strict``), for
    arrays of points: the points farther than ``_MARGIN`` raster pixels from the outline read the contour filled into
    a raster of ``cell`` level-0 pixels a pixel; the others are tested by OpenCV one by one."""

    def __init__(self, contour: np.ndarray, cell: float) -> None:
        import cv2

        self.contour, self.cell = contour, cell
        self.box = cv2.boundingRect(contour)
        self._raster: tuple[np.ndarray, np.ndarray] | None = None

    def raster(self) -> tuple[np.ndarray, np.ndarray]:
        """(filled, near the outline): uint8 rasters over the box, ``_MARGIN + 1`` pixels beyond it on each side."""
        import cv2

        if self._raster is None:
            bx, by, bw, bh = self.box
            m, cell = _MARGIN + 1, self.cell
            size = (int(np.ceil((bh - 1) / cell)) + 2 * m + 1, int(np.ceil((bw - 1) / cell)) + 2 * m + 1)
            points = np.round(((self.contour[:, 0, :] - (bx, by)) / cell + m) * 16).astype(np.int32)  # 4 fraction bits
            filled, outline = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
            cv2.fillPoly(filled, [points], 1, cv2.LINE_8, 4)
            cv2.polylines(outline, [points], True, 1, 1, cv2.LINE_8, 4)
            self._raster = filled, cv2.dilate(outline, np.ones((2 * _MARGIN + 1, 2 * _MARGIN + 1), np.uint8))
        return self._raster

    def __call__(self, x: np.ndarray, y: np.ndarray, strict: bool = False) -> np.ndarray:
        """bool, the shape of ``x`` and ``y`` (level-0 pixels): each point inside the contour (or on it unless
        ``strict``)."""
        import cv2

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = np.zeros(x.shape, bool)
        bx, by, bw, bh = self.box
        near = (x >= bx) & (x <= bx + bw - 1) & (y >= by) & (y <= by + bh - 1)  # beyond the box: outside the outline
        if not near.any():
            return out
        filled, outline = self.raster()
        px, py = x[near], y[near]
        m = _MARGIN + 1
        j = np.floor((px - bx) / self.cell + m + 0.5).astype(np.int64)  # the raster pixel whose centre is nearest
        i = np.floor((py - by) / self.cell + m + 0.5).astype(np.int64)
        result = filled[i, j].astype(bool)
        unsure = np.flatnonzero(outline[i, j])
        limit = 0 if strict else -1
        result[unsure] = [cv2.pointPolygonTest(self.contour, (float(px[k]), float(py[k])), False) > limit
                          for k in unsure]
        out[near] = result
        return out
