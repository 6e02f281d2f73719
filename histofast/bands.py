"""Streaming a level in bands of whole tile rows: bounded memory, each pixel decoded once.

Chunks of rows (aligned to the stored tiles) are decoded ahead in the slide's thread pool while the
caller works on the current band; rows still needed by the next tile row stay in a sliding window."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .io.level import LevelView

CHUNK_BYTES = 32 << 20  # decoded bytes per chunk: a few hundred stored tiles at 16k width
PREFETCH = 2  # chunks decoding ahead of the one being consumed


@dataclass(frozen=True)
class Band:
    """Rows ``y0 .. y0 + len(pixels)`` of the view, full width, and the tile rows they complete.

    ``pixels`` is uint8 (h, W, 3) in view pixels and is only valid until the next band is drawn.
    For every tile row ``i`` in ``rows``, view rows ``[i·stride − margin, i·stride + tile_size + margin)``
    (clipped to the view) lie inside it."""

    pixels: np.ndarray
    y0: int
    rows: range


def grid_rows(height: int, tile_size: int, stride: int) -> int:
    """Whole tiles of ``tile_size`` at ``stride`` along a side of ``height`` pixels (0 if none fit)."""
    return 0 if height < tile_size else (height - tile_size) // stride + 1


def stream_bands(
    view: LevelView, tile_size: int, stride: int, margin: int = 0, *,
    chunk_bytes: int | None = None, prefetch: int = PREFETCH,
) -> Iterator[Band]:
    """Bands of ``view`` covering every tile row of the grid (``tile_size``, ``stride``, view pixels).

    Args:
        view: the pixels to stream.
        tile_size, stride: the grid, view pixels.
        margin: extra rows above and below each tile row the consumer needs (e.g. augment shifts).
        chunk_bytes: decoded bytes per chunk read from the slide (default ``CHUNK_BYTES``).
        prefetch: chunks decoded ahead.
    Yields:
        ``Band``s in order; each tile row appears in exactly one band.
    """
    width, height = view.dimensions
    n_rows = grid_rows(height, tile_size, stride)
    if n_rows == 0:
        return
    end = min(height, (n_rows - 1) * stride + tile_size + margin)  # no row below this is needed
    align = view.row_alignment
    chunk = max(align, (chunk_bytes or CHUNK_BYTES) // (3 * width) // align * align)
    window = np.empty((tile_size + 2 * margin + chunk, width, 3), np.uint8)
    free = [np.empty((chunk, width, 3), np.uint8) for _ in range(max(1, prefetch))]
    inflight: deque = deque()
    next_y = 0

    def submit() -> None:
        nonlocal next_y
        if next_y < end and free:
            h = min(chunk, end - next_y)
            buf = free.pop()
            futures = [view.slide.pool.submit(job) for job in view.jobs(0, next_y, width, h, buf[:h])]
            inflight.append((next_y, h, buf, futures))
            next_y += h

    win_y0, win_len, row = 0, 0, 0
    try:
        for _ in range(len(free)):
            submit()
        while row < n_rows:
            y, h, buf, futures = inflight.popleft()
            for future in futures:
                future.result()
            skip = min(h, max(0, win_y0 - y))  # rows above the window are no longer needed (stride > tile)
            window[win_len : win_len + h - skip] = buf[skip:h]
            win_len += h - skip
            free.append(buf)
            submit()
            have = win_y0 + win_len
            last = n_rows - 1 if have >= end else min(n_rows - 1, (have - tile_size - margin) // stride)
            if last < row:
                continue
            yield Band(window[:win_len], win_y0, range(row, last + 1))
            row = last + 1
            keep_from = max(win_y0, row * stride - margin)
            keep = max(0, have - keep_from)
            window[:keep] = window[keep_from - win_y0 : win_len]  # numpy buffers overlapping moves
            win_y0, win_len = (keep_from, keep) if keep else (max(keep_from, have), 0)
    finally:
        for _, _, _, futures in inflight:  # stop decoding ahead for a consumer that stopped early
            for future in futures:
                future.cancel()
