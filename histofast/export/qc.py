"""The QC image of an export: the slide's thumbnail with the kept tiles outlined, the rest of the grid tinted, the
tiles ``skip_background`` decided without decoding tinted apart, and CLAM's tissue contours (``tissue="otsu"``)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..tiling import TileGrid
from ..utils.atomic import atomic_path

CONTOUR_COLOUR = (255, 170, 0)  # CLAM's tissue contours (tissue="otsu"), drawn over the rest
HOLE_COLOUR = (150, 0, 200)  # and their holes


def write_qc(slide: Any, grid: TileGrid, path: str | os.PathLike, max_size: int = 2048) -> None:
    """A PNG of the slide's thumbnail (at most ``max_size`` pixels a side) with the grid's decisions
    over it: the area kept tiles cover outlined green, the rest of the grid tinted red, except the tiles that
    ``skip_background`` left undecoded (``grid.skipped``), tinted blue; the contours of CLAM's segmentation, when it
    kept the tiles (``grid.segmentation``), in orange, their holes in purple. Atomic."""
    from PIL import Image

    thumb = slide.thumbnail((max_size, max_size))
    scale = thumb.shape[1] / slide.dimensions[0]  # thumbnail pixels per level-0 pixel
    side = grid.tile_size * grid.downsample * scale
    kept = np.zeros(thumb.shape[:2], bool)
    for x, y in grid.coords * scale:
        kept[round(y) : round(y + side), round(x) : round(x + side)] = True
    rows, cols = grid.shape
    covered = np.zeros_like(kept)
    reach = (grid.stride * grid.downsample * scale * np.array([cols - 1, rows - 1])) + side
    if grid.white_ratio.size:  # an empty grid (a slide smaller than one tile) covers nothing
        covered[: round(reach[1]), : round(reach[0])] = True
    skipped = np.zeros_like(kept)
    if grid.skipped is not None:
        for x, y in np.argwhere(grid.skipped)[:, ::-1] * grid.stride * grid.downsample * scale:
            skipped[round(y) : round(y + side), round(x) : round(x + side)] = True
        skipped &= ~kept
    out = thumb.astype(np.float32)
    out[covered & ~kept & ~skipped] = 0.65 * out[covered & ~kept & ~skipped] + 0.35 * np.array([230, 30, 30])
    out[skipped] = 0.65 * out[skipped] + 0.35 * np.array([40, 90, 230])
    w = max(1, max_size // 512)
    inner = np.zeros_like(kept)
    inner[w:-w, w:-w] = (kept[w:-w, w:-w] & kept[:-2 * w, w:-w] & kept[2 * w:, w:-w] & kept[w:-w, :-2 * w]
                         & kept[w:-w, 2 * w:])
    out[kept & ~inner] = (20, 170, 60)
    if grid.segmentation is not None:
        out = _draw_contours(out.round().astype(np.uint8), grid.segmentation, scale, max(1, max_size // 1024))
    with atomic_path(path) as tmp:
        Image.fromarray(out.round().astype(np.uint8)).save(tmp, format="PNG")


def _draw_contours(image: np.ndarray, segmentation: Any, scale: float, thickness: int) -> np.ndarray:
    """``image`` with the segmentation's contours (level-0 pixels, ``scale`` image pixels per level-0 pixel) drawn."""
    import cv2

    def scaled(contours: list[np.ndarray]) -> list[np.ndarray]:
        return [np.round(c * scale).astype(np.int32) for c in contours]

    image = np.ascontiguousarray(image)
    cv2.drawContours(image, scaled(segmentation.contours), -1, CONTOUR_COLOUR, thickness, cv2.LINE_8)
    cv2.drawContours(image, scaled([h for holes in segmentation.holes for h in holes]), -1, HOLE_COLOUR, thickness,
                     cv2.LINE_8)
    return image
