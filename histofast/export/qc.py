"""The QC image of an export: the slide's thumbnail with the kept tiles outlined, the rest of the grid tinted, and the
tiles ``skip_background`` decided without decoding tinted apart."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..tiling import TileGrid
from ..utils.atomic import atomic_path


def write_qc(slide: Any, grid: TileGrid, path: str | os.PathLike, max_size: int = 2048) -> None:
    """A PNG of the slide's thumbnail (at most ``max_size`` pixels a side) with the grid's decisions
    over it: the area kept tiles cover outlined green, the rest of the grid tinted red, except the tiles that
    ``skip_background`` left undecoded (``grid.skipped``), tinted blue. Atomic."""
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
    with atomic_path(path) as tmp:
        Image.fromarray(out.round().astype(np.uint8)).save(tmp, format="PNG")

