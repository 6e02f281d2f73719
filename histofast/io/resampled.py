"""The reads of a resampled view (``LevelView`` with ``scale`` ≠ 1): level pixels decoded, then ``ops.resample``.

Every view pixel is ``ops.resample`` of the level with the whole view's taps (``ops.triangle_taps``: the
triangle filter of radius ``scale``), which are integers; a piece of the view uses the slice of them that
covers it, so any piece reads the same pixels as one read of the whole view.

- ``scan_jobs``, and ``region_jobs`` of whole view rows (a band): each stored tile under the rows decoded once
  (a band's first and last stored-tile rows also by the bands beside it). A job decodes a strip of stored-tile
  rows (for a wide level, a group of whole tile columns of it), a cache-sized chunk at a time, and resamples
  the view rows whose taps lie in it; a view row whose taps straddle two strips is resampled by whichever of the
  two jobs ends last, from the level rows each keeps of its edge (``_Edges``).
- ``region_jobs`` of any other region: pieces ``RESAMPLE_PIECE`` view pixels wide, each decoding the level
  pixels under its taps (stored tiles under two pieces' taps are decoded by both)."""
from __future__ import annotations

import math
import threading
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from .. import ops
from .slide import Job, OnPart

if TYPE_CHECKING:
    from .level import LevelView

RESAMPLE_PIECE = 1024  # view pixels across per piece of a region read, one job each
STRIP_BYTES = 32 << 20  # level bytes per scan job at most: a strip's columns come in groups below this
CHUNK_BYTES = 1 << 20  # level bytes decoded at a time by a scan job (whole stored tiles): stays in cache


class ResampledReads:
    """The jobs that read ``view`` (``scale`` ≠ 1), with the taps of the whole view along each axis."""

    def __init__(self, view: "LevelView") -> None:
        self.view = view

    @cached_property
    def taps(self) -> tuple[ops.Taps, ops.Taps]:
        """``(x_taps, y_taps)`` of every view column and row (``ops.triangle_taps``)."""
        (lw, lh), (w, h) = self.view.slide.level_dimensions[self.view.level], self.view.dimensions
        return ops.triangle_taps(0, w, self.view.scale, lw), ops.triangle_taps(0, h, self.view.scale, lh)

    def region_jobs(self, x: int, y: int, w: int, h: int, out: np.ndarray, on_part: OnPart | None) -> list[Job]:
        """Jobs filling ``out`` (h, w, 3) with the view region at (x, y), view pixels inside the view; each calls
        ``on_part(part, x, y)`` with the part it filled. Whole rows (a band) are read as a scan reads them; other
        regions in pieces of ``RESAMPLE_PIECE`` columns."""
        if x == 0 and w == self.view.dimensions[0]:
            def into_out(part: np.ndarray, px: int, py: int) -> None:
                place = out[py - y : py - y + part.shape[0], px : px + part.shape[1]]
                place[...] = part
                if on_part is not None:
                    on_part(place, px, py)

            return [job for _, job in self._strips(range(y, y + h), into_out)]
        return [self._piece(px, y, min(RESAMPLE_PIECE, x + w - px), h, out[:, px - x : px - x + RESAMPLE_PIECE],
                            on_part) for px in range(x, x + w, RESAMPLE_PIECE)]

    def _piece(self, x: int, y: int, w: int, h: int, out: np.ndarray, on_part: OnPart | None) -> Job:
        def job() -> None:
            out[...] = self._resample(range(x, x + w), range(y, y + h))
            if on_part is not None:
                on_part(out, x, y)

        return job

    def _resample(self, cols: range, rows: range, pixels: np.ndarray | None = None,
                  origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """View pixels ``rows`` × ``cols``: from ``pixels``, the level region at ``origin`` (x, y) under their taps,
        where given; else decoded here (the stored tiles ``view.skip`` allows left white)."""
        x_taps, y_taps = self.taps[0][cols.start : cols.stop], self.taps[1][rows.start : rows.stop]
        if pixels is None:
            (x0, x1), (y0, y1) = x_taps.span, y_taps.span
            origin, pixels = (x0, y0), self._decoded(x0, y0, x1, y1)
        return ops.resample(pixels, x_taps.shifted(origin[0]), y_taps.shifted(origin[1]), threads=1)

    def _decoded(self, x0: int, y0: int, x1: int, y1: int, out: np.ndarray | None = None) -> np.ndarray:
        """The level region [x0, x1) × [y0, y1) decoded (into ``out`` if given), in this thread."""
        jobs, out = self.view.slide.region_jobs(self.view.level, (x0, y0), (x1 - x0, y1 - y0), out,
                                                skip=self.view.skip)
        for part in jobs:  # already inside a pool job: run inline
            part()
        return out

    def scan_jobs(self, height: int, on_part: OnPart) -> list[tuple[int, Job]]:
        """``LevelView.scan_jobs`` for the view: view rows ``0 .. height`` handed to ``on_part(part, x, y)``,
        each stored tile under them decoded once; ``(rows, job)`` in row order (see ``Slide.scan_jobs``)."""
        return self._strips(range(height), on_part)

    def _strips(self, rows: range, on_part: OnPart) -> list[tuple[int, Job]]:
        """Jobs handing the view's rows ``rows`` (full width) to ``on_part``: the level rows under them in strips of
        whole stored-tile rows, each strip in column groups; ``(rows done, job)`` in row order."""
        (xf, xw), (yf, yw) = (self.taps[0].first, self.taps[0].weights), (self.taps[1].first, self.taps[1].weights)
        tw, th = self.view.slide.tile_shape(self.view.level)
        strip = th * math.ceil(yw.shape[1] / th)  # a view row's taps span two strips at most
        start, end = int(yf[rows.start]), int(yf[rows.stop - 1]) + yw.shape[1]  # level rows read
        # View columns by the column group of their last tap; a group decodes from its first column's first tap.
        group = max(tw, STRIP_BYTES // (3 * strip) // tw * tw)
        last = xf + xw.shape[1]
        splits = [0, *np.searchsorted(last, range(group, int(last[-1]), group), "right").tolist(), len(xf)]
        groups = [range(a, b) for a, b in zip(splits, splits[1:]) if b > a]
        first, stop = yf[rows.start : rows.stop], yf[rows.start : rows.stop] + yw.shape[1]

        def index(values: np.ndarray, level_row: int, side: str = "left") -> int:
            return rows.start + int(np.searchsorted(values, level_row, side))

        edges, jobs = _Edges(self, on_part), []
        for top in range(start - start % strip, end, strip):
            top, bottom = max(top, start), min(top + strip, end)
            inside = range(index(first, top), index(stop, bottom, "right"))
            above = range(index(stop, top, "right"), inside.start)  # view rows straddling `top`
            below = range(inside.stop, index(first, bottom))  # and `bottom`
            jobs += [(inside.stop, self._strip(top, bottom, cols, inside, above, below, on_part, edges))
                     for cols in groups]
        return jobs

    def _strip(self, top: int, bottom: int, cols: range, inside: range, above: range, below: range,
               on_part: OnPart, edges: "_Edges") -> Job:
        """The job of one strip's column group: its level columns decoded a chunk of whole stored tiles at a time
        into a buffer small enough to stay in cache, and the view columns each chunk completes resampled at once;
        the strip's edge rows gathered for ``edges``."""

        def job() -> None:
            (xf, xw), (yf, yw) = (self.taps[0].first, self.taps[0].weights), (self.taps[1].first, self.taps[1].weights)
            tw = self.view.slide.tile_shape(self.view.level)[0]
            c0, c1, h = int(xf[cols.start]), int(xf[cols.stop - 1]) + xw.shape[1], bottom - top
            width = max(tw, CHUNK_BYTES // (3 * h * tw) * tw)
            buf = np.empty((h, width + xw.shape[1], 3), np.uint8)
            upper = yf[above.stop - 1] + yw.shape[1] - top if above else 0  # rows of the strip straddlers read
            lower = bottom - yf[below.start] if below else 0
            head, foot = np.empty((upper, c1 - c0, 3), np.uint8), np.empty((lower, c1 - c0, 3), np.uint8)
            done, lo, a = cols.start, c0, c0  # the next view column to resample; level columns of buf[:, 0], chunk
            while a < c1:
                b = min(a - a % width + width, c1)  # chunks end on multiples of `width` (stored tiles decode once)
                keep = a - min(int(xf[done]), a) if done < cols.stop else 0  # columns the next view column reads
                buf[:, :keep] = buf[:, a - lo - keep : a - lo].copy()
                lo = a - keep
                self._decoded(a, top, b, bottom, buf[:, keep : keep + b - a])
                head[:, a - c0 : b - c0], foot[:, a - c0 : b - c0] = buf[:upper, keep : keep + b - a], \
                    buf[h - lower :, keep : keep + b - a]
                ready = cols.stop if b == c1 else int(np.searchsorted(xf + xw.shape[1], b, "right"))
                if inside and ready > done:
                    on_part(self._resample(range(done, ready), inside, buf[:, : b - lo], (lo, top)), done,
                            inside.start)
                done, a = max(done, ready), b
            if above:
                edges.meet(top, cols, above, "below", head)
            if below:
                edges.meet(bottom, cols, below, "above", foot)

        return job


class _Edges:
    """The level rows on either side of a strip boundary that the view rows straddling it read: the first of
    the two jobs to end leaves its side here, the second resamples the straddling rows from both sides."""

    def __init__(self, reads: ResampledReads, on_part: OnPart) -> None:
        self.reads, self.on_part = reads, on_part
        self.waiting: dict[tuple[int, int], np.ndarray] = {}
        self.lock = threading.Lock()

    def meet(self, boundary: int, cols: range, rows: range, side: str, pixels: np.ndarray) -> None:
        """Hand over ``pixels``, the level rows ``side`` ("above" or "below") of the level row ``boundary``
        under view rows ``rows`` × ``cols``; resample those view rows once both sides are here."""
        with self.lock:
            other = self.waiting.pop((boundary, cols.start), None)
            if other is None:
                self.waiting[(boundary, cols.start)] = pixels
                return
        upper, lower = (pixels, other) if side == "above" else (other, pixels)
        origin = (int(self.reads.taps[0].first[cols.start]), boundary - len(upper))
        self.on_part(self.reads._resample(cols, rows, np.concatenate([upper, lower]), origin), cols.start,
                     rows.start)
