"""Reading a level in bands of whole tile rows: bounded memory, each pixel decoded once.

Chunks of rows (aligned to the stored tiles) are decoded ahead in the slide's thread pool while the
caller works on the current band; rows still needed by the next tile row stay in a sliding window."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .level import LevelView

CHUNK_BYTES = 64 << 20  # decoded bytes per chunk: a few hundred stored tiles at 16k width
CHUNKS_AHEAD = 2  # chunks decoded ahead of the one being consumed
MEMORY_BUDGET = 512 << 20  # band buffers of very wide levels: fewer chunks ahead rather than more memory


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


def read_bands(
    view: LevelView, tile_size: int, stride: int, margin: int = 0, *,
    chunk_bytes: int | None = None, prefetch: int = CHUNKS_AHEAD,
) -> Iterator[Band]:
    """Bands of ``view`` covering every tile row of the grid (``tile_size``, ``stride``, view pixels).

    Args:
        view: the pixels to stream.
        tile_size, stride: the grid, view pixels.
        margin: extra rows above and below each tile row the consumer needs (e.g. augment shifts).
        chunk_bytes: decoded bytes per chunk read from the slide (default ``CHUNK_BYTES``).
        prefetch: chunks decoded ahead (fewer when ``MEMORY_BUDGET`` would be exceeded).
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
    per_chunk = -(-end // -(-end // chunk))  # the same rows split evenly: no mostly empty last chunk
    chunk = -(-per_chunk // align) * align
    # Each buffer holds a chunk below a head of rows carried over from the previous chunk (fewer than
    # tile_size + 2·margin are ever still needed), so chunks decode straight into their band.
    head = tile_size + 2 * margin if end > chunk else 0
    chunks = -(-end // chunk)
    # Two buffers at least when there are several chunks: the previous one is read until the next is filled.
    count = min(chunks, max(2, min(prefetch + 1, MEMORY_BUDGET // ((head + chunk) * width * 3))))
    free = [np.empty((head + chunk, width, 3), np.uint8) for _ in range(count)]
    inflight: deque = deque()
    next_y = 0

    def submit() -> None:
        nonlocal next_y
        if next_y < end and free:
            h = min(chunk, end - next_y)
            buf = free.pop()
            futures = [view.slide.pool.submit(job) for job in view.jobs(0, next_y, width, h, buf[head : head + h])]
            inflight.append((next_y, h, buf, futures))
            next_y += h

    window, previous, keep_from, row = None, None, 0, 0
    try:
        for _ in range(count):
            submit()
        while row < n_rows:
            y, h, buf, futures = inflight.popleft()
            for future in futures:
                future.result()
            keep = max(0, y - keep_from)  # rows of the previous band still needed
            if keep:
                buf[head - keep : head] = window[len(window) - keep :]
            window, top = buf[head - keep : head + h], y - keep
            if previous is not None:
                free.append(previous)
                submit()
            previous = buf
            have = y + h
            last = n_rows - 1 if have >= end else min(n_rows - 1, (have - tile_size - margin) // stride)
            if last >= row:
                yield Band(window, top, range(row, last + 1))
                row = last + 1
            keep_from = max(top, row * stride - margin)
    finally:
        for _, _, _, futures in inflight:  # stop decoding ahead for a consumer that stopped early
            for future in futures:
                future.cancel()
