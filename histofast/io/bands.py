"""Reading a level in bands of whole tile rows: bounded memory, each pixel decoded once.

Chunks of rows (aligned to the stored tiles) are decoded ahead while the caller works on the current
band; rows still needed by the next tile row stay in a sliding window. What decodes the rows is a
``Rows`` source: the slide's own decoders in its thread pool (``SlideRows``, numpy buffers) or
nvImageCodec (``histofast.io.nvimgcodec.NvRows``, on a GPU straight into device memory)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from .. import ops
from ..errors import SlideError
from .level import LevelView
from .slide import OnPart

CHUNK_BYTES = 64 << 20  # decoded bytes per chunk: a few hundred stored tiles at 16k width
CHUNKS_AHEAD = 2  # chunks decoded ahead of the one being consumed
MEMORY_BUDGET = 512 << 20  # band buffers of very wide levels: fewer chunks ahead rather than more memory
BAND_MEMORY_LIMIT = 4 << 30  # bytes: band buffers beyond this (tall stored tiles on a huge level) are refused


@dataclass
class Pending:
    """Decodes in flight: ``wait()`` returns once they are done (raising the first failure), then calls
    ``ready`` with the last one's result (a GPU source makes the caller's stream wait on it there)."""

    futures: list[Future]
    ready: Callable[[Any], None] | None = field(default=None)

    def wait(self) -> None:
        result = None
        for future in self.futures:
            result = future.result()
        if self.ready is not None:
            self.ready(result)

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


class Rows(Protocol):
    """What decodes a view's rows into band buffers."""

    name: str  # what decodes, for reports: the slide backend ("tiff", "openslide", …) or "nvimgcodec-gpu"/"-cpu"
    chunk_bytes: int  # decoded bytes per chunk

    def empty(self, shape: tuple[int, ...]) -> Any:
        """An uninitialised uint8 buffer of ``shape`` where this source writes (numpy or a device tensor)."""

    def read(self, y: int, h: int, out: Any) -> Pending:
        """Start decoding view rows ``y .. y + h`` (full width) into ``out`` (h, W, 3). On a GPU the decode
        waits (on the device) for the work already queued on the caller's current stream: ``out``'s last readers."""

    def close(self) -> None:
        """Release the decoder (the slide stays open)."""


class SlideRows:
    """Rows decoded by the slide's own decoders (tiled-TIFF fast path, OpenSlide, Pillow) in its thread pool.

    ``on_part(part, x, y)``, if set, is called in the decoding thread with each decoded part (view pixels):
    ``tile_grid`` counts white pixels there while they are in cache (``histofast.tiling.counts``).
    For a CUDA ``device`` the buffers are pinned host memory (torch tensors), so their copy to the device runs
    while the next rows decode (``histofast.tiling.buffers.to_device``); a read into one waits (in the decoding
    threads) for the work queued so far on the caller's stream, the last copy out of it included."""

    def __init__(self, view: LevelView, on_part: OnPart | None = None, device: str = "cpu") -> None:
        self.view = view
        self.name = view.slide.backend
        self.on_part = on_part
        self.device = device

    @property
    def chunk_bytes(self) -> int:
        return CHUNK_BYTES

    def empty(self, shape: tuple[int, ...]) -> Any:
        if self.device == "cpu":
            return np.empty(shape, np.uint8)
        import torch

        return torch.empty(shape, dtype=torch.uint8, pin_memory=True)

    def read(self, y: int, h: int, out: Any) -> Pending:
        jobs = self.view.jobs(0, y, self.view.dimensions[0], h, _host_view(out), self.on_part)
        if self.device != "cpu":
            jobs = _after_device_reads(jobs, self.device)
        if self.view.slide.threads == 1:  # one thread in all: decode now, in the caller's thread
            done: Future = Future()
            try:
                for job in jobs:
                    job()
                done.set_result(None)
            except Exception as e:  # raised by wait(), where a pool's failure would be
                done.set_exception(e)
            return Pending([done])
        return Pending([self.view.slide.pool.submit(job) for job in jobs])

    def close(self) -> None:
        pass


def _host_view(out: Any) -> np.ndarray:
    """A numpy view of a host buffer (a numpy array, or a pinned torch tensor) for the decoders to write."""
    return out if isinstance(out, np.ndarray) else out.numpy()


def _after_device_reads(jobs: list[Callable[[], None]], device: str) -> list[Callable[[], None]]:
    """``jobs`` that first wait for the work queued now on ``device``'s current stream: the asynchronous
    copies still reading the pinned buffer they are about to overwrite."""
    import torch

    queued = torch.cuda.current_stream(device).record_event()

    def after(job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            queued.synchronize()
            job()
        return run

    return [after(job) for job in jobs]


@dataclass(frozen=True)
class Band:
    """Rows ``y0 .. y0 + len(pixels)`` of the view, full width, and the tile rows they complete.

    ``pixels`` is uint8 (h, W, 3) in view pixels (numpy; a torch tensor on the GPU that decoded it, or in
    pinned host memory for a GPU consumer) and is only valid until the next band is drawn.
    For every tile row ``i`` in ``rows``, view rows ``[i·stride − margin, i·stride + tile_size + margin)``
    (clipped to the view) lie inside it."""

    pixels: np.ndarray
    y0: int
    rows: range


def read_bands(
    view: LevelView, tile_size: int, stride: int, margin: int = 0, *,
    chunk_bytes: int | None = None, prefetch: int = CHUNKS_AHEAD, rows: Rows | None = None,
) -> Iterator[Band]:
    """Bands of ``view`` covering every tile row of the grid (``tile_size``, ``stride``, view pixels).

    Args:
        view: the pixels to stream.
        tile_size, stride: the grid, view pixels.
        margin: extra rows above and below each tile row the consumer needs (e.g. augment shifts).
        chunk_bytes: decoded bytes per chunk read from the slide (default: the source's).
        prefetch: chunks decoded ahead (fewer when ``MEMORY_BUDGET`` would be exceeded).
        rows: what decodes the view's rows (default: ``SlideRows(view)``, the slide's own decoders).
    Yields:
        ``Band``s in order; each tile row appears in exactly one band.
    Raises:
        SlideError: the band buffers would exceed ``BAND_MEMORY_LIMIT`` (e.g. stored tiles thousands of rows
            tall on a level a million pixels wide), found before anything is allocated.
    """
    width, height = view.dimensions
    if height < tile_size:  # no whole tile row: nothing to read (ops.grid_shape would raise)
        return
    n_rows = ops.grid_shape(height, tile_size, tile_size, stride)[0]  # the rows only: any width that fits a tile
    end = min(height, (n_rows - 1) * stride + tile_size + margin)  # no row below this is needed
    rows = rows or SlideRows(view)
    align = view.row_alignment
    chunk = max(align, (chunk_bytes or rows.chunk_bytes) // (3 * width) // align * align)
    per_chunk = -(-end // -(-end // chunk))  # the same rows split evenly: no mostly empty last chunk
    chunk = -(-per_chunk // align) * align
    # Each buffer holds a chunk below a head of rows carried over from the previous chunk (fewer than
    # tile_size + 2·margin are ever still needed), so chunks decode straight into their band.
    head = tile_size + 2 * margin if end > chunk else 0
    chunks = -(-end // chunk)
    # Two buffers at least when there are several chunks: the previous one is read until the next is filled.
    count = min(chunks, max(2, min(prefetch + 1, MEMORY_BUDGET // ((head + chunk) * width * 3))))
    need = count * (head + chunk) * width * 3
    if need > BAND_MEMORY_LIMIT:  # checked before allocating: a MemoryError would name nothing
        raise SlideError(view.slide.path, f"level {view.level} ({width}×{height} pixels, stored tiles {align} rows "
                                          f"tall) needs {need / 2**30:.1f} GiB of band buffers for tiles of "
                                          f"{tile_size}, over histofast's {BAND_MEMORY_LIMIT / 2**30:.3g} GiB limit; "
                                          "tile a coarser level (level=, mpp=)")
    free = [rows.empty((head + chunk, width, 3)) for _ in range(count)]
    inflight: deque = deque()
    next_y = 0

    def submit() -> None:
        nonlocal next_y
        if next_y < end and free:
            h = min(chunk, end - next_y)
            buf = free.pop()
            inflight.append((next_y, h, buf, rows.read(next_y, h, buf[head : head + h])))
            next_y += h

    window, previous, keep_from, row = None, None, 0, 0
    try:
        for _ in range(count):
            submit()
        while row < n_rows:
            y, h, buf, pending = inflight.popleft()
            pending.wait()
            keep = max(0, y - keep_from)  # rows of the previous band still needed
            if keep:
                buf[head - keep : head] = window[len(window) - keep :]
            window, top = buf[head - keep : head + h], y - keep
            if previous is not None:  # its last reader (the copy just above) is queued: decode into it next
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
        for _, _, _, pending in inflight:  # stop decoding ahead for a consumer that stopped early
            pending.cancel()
