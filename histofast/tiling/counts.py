"""White pixels counted while they are decoded: the fused half of ``tile_grid``'s scoring on the CPU.

Each decoder thread adds the white pixels of the part it just decoded (``ops.white_counts``, while the
part is in cache) to per-cell counts over the whole view, cells of side gcd(tile_size, stride); a
band's white ratios then come from the counts by ``ops.white_ratio``'s own formula
(``ops.white_ratio_from_counts``), and the band's pixels are never read a second time."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops

MAX_COUNT_BYTES = 64 << 20  # counts of finer cells (a stride far from the tile size) are not kept: white_ratio


class WhiteCounts:
    """White pixels per cell of a grid's view, filled by decoder threads through ``add``."""

    def __init__(self, view_size: tuple[int, int], tile_size: int, stride: int, lower: Any, upper: Any) -> None:
        width, height = view_size
        self.tile_size, self.stride, self.lower, self.upper = tile_size, stride, lower, upper
        self.cell = math.gcd(tile_size, stride)
        rows, cols = ops.grid_shape(height, width, tile_size, stride)
        self.cols = cols
        self.counts = np.zeros((((rows - 1) * stride + tile_size) // self.cell,
                                ((cols - 1) * stride + tile_size) // self.cell), np.int64)

    @classmethod
    def fits(cls, view_size: tuple[int, int], tile_size: int, stride: int) -> bool:
        """Whether the counts of this grid are small enough to keep (``MAX_COUNT_BYTES``)."""
        cell = math.gcd(tile_size, stride)
        return (view_size[0] // cell) * (view_size[1] // cell) * 8 <= MAX_COUNT_BYTES

    def add(self, part: np.ndarray, x: int, y: int) -> None:
        """Count the white pixels of ``part`` (view pixels at (x, y)); called from decoder threads."""
        ops.white_counts(part, self.counts, x, y, self.cell, self.lower, self.upper)

    __call__ = add  # an ``OnPart``

    @property
    def white_counts_args(self) -> tuple[np.ndarray, int, Any, Any]:
        """(counts, cell, lower, upper): a reader that decodes JPEG tiles itself counts them in the same call
        (``ops.decode_jpegs_counting_white``) instead of calling this ``OnPart`` per tile."""
        return self.counts, self.cell, self.lower, self.upper

    def ratio(self, rows: range) -> np.ndarray:
        """White ratio of tile rows ``rows`` (all their pixels counted): float32 (len(rows), cols), the same
        values as ``ops.white_ratio`` (``ops.white_ratio_from_counts``: white_ratio's own C++ formula)."""
        return ops.white_ratio_from_counts(self.counts, self.cell, self.tile_size, self.stride, rows)
