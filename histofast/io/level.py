"""Which pixels a grid is cut from: a slide level, or a level resampled on the fly to a target µm/pixel.

``select_level`` turns ``level=`` / ``mpp=`` / ``magnification=`` into a ``LevelView``; the view reads
regions in its own pixels, the same way whatever piece of it is read."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import HistofastError
from .slide import Job, OnPart, Skip, Slide

RESAMPLE_TOLERANCE = 0.05  # within 5% of the target, a level is used as it is
RESAMPLE_PIECE = 1024  # view pixels per resampled piece (width), one job each


@dataclass(frozen=True)
class LevelView:
    """Pixels of ``slide`` level ``level``, resampled by ``scale`` (level pixels per view pixel; 1 = as stored).

    A resampled view has ``(floor(w / scale), floor(h / scale))`` pixels; view pixel (x, y) is centred
    on level position ((x + ½)·scale, (y + ½)·scale) and filtered with an antialiased triangle
    (bilinear) kernel of radius ``scale``. Its weights depend only on the pixel's position, so a
    region reads the same however the view is cut into pieces.

    ``skip``, when set (``GridSpec(skip_background=True)``), says which level rectangles may stay white without
    being decoded: every read of the view leaves those stored tiles white (``Slide.region_jobs``)."""

    slide: Slide
    level: int
    scale: float = 1.0
    skip: Skip | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) in view pixels."""
        w, h = self.slide.level_dimensions[self.level]
        return (w, h) if self.scale == 1.0 else (int(w / self.scale), int(h / self.scale))

    @property
    def downsample(self) -> float:
        """Level-0 pixels per view pixel."""
        return self.slide.level_downsamples[self.level] * self.scale

    @property
    def mpp(self) -> float | None:
        """µm per view pixel, None when the slide has no mpp metadata."""
        return None if self.slide.mpp is None else self.slide.mpp * self.downsample

    @property
    def row_alignment(self) -> int:
        """Reads starting on multiples of this many rows decode each stored tile once."""
        return self.slide.tile_shape(self.level)[1] if self.scale == 1.0 else 1

    def jobs(self, x: int, y: int, w: int, h: int, out: np.ndarray, on_part: OnPart | None = None) -> list[Job]:
        """Jobs filling ``out`` uint8 (h, w, 3) with the view region at (x, y), view pixels; each calls
        ``on_part(part, x, y)`` (view pixels) with the parts it filled, as ``Slide.region_jobs`` does."""
        if self.scale == 1.0:
            return self.slide.region_jobs(self.level, (x, y), (w, h), out, on_part, self.skip)[0]
        return [self._resampled(px, y, min(RESAMPLE_PIECE, x + w - px), h, out[:, px - x : px - x + RESAMPLE_PIECE],
                                on_part) for px in range(x, x + w, RESAMPLE_PIECE)]

    def scan_jobs(self, height: int, on_part: OnPart) -> list[tuple[int, Job]]:
        """``Slide.scan_jobs`` for the view: rows ``0 .. height`` decoded once each, every part handed to
        ``on_part(part, x, y)`` (view pixels) and not kept; ``(rows, job)`` in row order."""
        if self.scale == 1.0:
            return self.slide.scan_jobs(self.level, height, on_part, self.skip)
        width, s = self.dimensions[0], self.scale
        return [(min(y + RESAMPLE_PIECE, height),
                 self._scan_piece(x, y, min(RESAMPLE_PIECE, width - x), min(RESAMPLE_PIECE, height - y), on_part))
                for y in range(0, height, RESAMPLE_PIECE) for x in range(0, width, RESAMPLE_PIECE)
                if self.skip is None or not self.skip(int(x * s), int(y * s), math.ceil((x + RESAMPLE_PIECE) * s),
                                                      math.ceil((y + RESAMPLE_PIECE) * s))]

    def _scan_piece(self, x: int, y: int, w: int, h: int, on_part: OnPart) -> Job:
        def job() -> None:
            self._resampled(x, y, w, h, np.empty((h, w, 3), np.uint8), on_part)()

        return job

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The view region at (x, y) of size (w, h), view pixels: uint8 (h, w, 3)."""
        out = np.empty((h, w, 3), np.uint8)
        self.slide.run(self.jobs(x, y, w, h, out))
        return out

    def _resampled(self, x: int, y: int, w: int, h: int, out: np.ndarray, on_part: OnPart | None = None) -> Job:
        def job() -> None:
            lw, lh = self.slide.level_dimensions[self.level]
            cols, wx = _taps(x, w, self.scale, lw)
            rows, wy = _taps(y, h, self.scale, lh)
            c0, r0 = cols.min(), rows.min()
            jobs, source = self.slide.region_jobs(self.level, (c0, r0), (cols.max() + 1 - c0, rows.max() + 1 - r0),
                                                  skip=self.skip)
            for part in jobs:  # already inside a pool job: run inline
                part()
            across = np.zeros((source.shape[0], w, 3), np.float32)
            for k in range(cols.shape[1]):  # the same terms in the same order for every piece
                across += wx[:, k, None] * source[:, cols[:, k] - c0]
            down = np.zeros((h, w, 3), np.float32)
            for k in range(rows.shape[1]):
                down += wy[:, k, None, None] * across[rows[:, k] - r0]
            out[...] = np.floor(down + 0.5).clip(0, 255)
            if on_part is not None:
                on_part(out, x, y)

        return job


def _taps(start: int, n: int, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights of view pixels start..start+n−1 along an axis of ``size`` level pixels:
    int64 and float32 (n, taps); taps outside the level get weight 0 (the rest renormalised)."""
    centre = (np.arange(start, start + n) + 0.5) * scale
    taps = math.ceil(2 * scale) + 2
    index = np.floor(centre - scale).astype(np.int64)[:, None] + np.arange(taps)
    weight = np.clip(1 - np.abs((index + 0.5 - centre[:, None]) / scale), 0, None)
    weight[(index < 0) | (index >= size)] = 0
    weight /= weight.sum(1, keepdims=True)
    return index.clip(0, size - 1), weight.astype(np.float32)


def select_level(
    slide: Slide, level: int | None = None, mpp: float | None = None, magnification: float | None = None
) -> LevelView:
    """The view a grid is cut from: ``level`` as stored, or the pixels nearest ``mpp`` / ``magnification``.

    For ``mpp`` (µm per pixel) and ``magnification`` (e.g. 20 for 20×) the closest level at or finer
    than the target is chosen, and resampled when it differs from the target by more than 5%.
    """
    check_view_args(level, mpp, magnification)
    if mpp is not None:
        if slide.mpp is None:
            raise HistofastError(f"mpp={mpp}: {slide.path.name} has no µm-per-pixel metadata; "
                                 f"choose a level with level= instead (levels {slide.levels_text})")
        return _view_for_downsample(slide, mpp / slide.mpp, f"mpp={mpp} (level 0 is {slide.mpp:.4g} µm/pixel)")
    if magnification is not None:
        if slide.objective_power is None:
            raise HistofastError(f"magnification={magnification}: {slide.path.name} has no objective-power metadata; "
                                 f"choose a level with level= instead (levels {slide.levels_text})")
        return _view_for_downsample(slide, slide.objective_power / magnification,
                                    f"magnification={magnification} (level 0 is {slide.objective_power:g}×)")
    return LevelView(slide, slide.check_level(0 if level is None else level))


def check_view_args(level: object, mpp: object, magnification: object) -> None:
    """What ``select_level`` needs of any slide, checkable before one is read: at most one of ``level``, ``mpp``
    (µm per pixel) and ``magnification``, the last two positive and finite. (``level`` is checked against each
    slide's levels by ``select_level``.)"""
    given = [name for name, v in (("level", level), ("mpp", mpp), ("magnification", magnification)) if v is not None]
    if len(given) > 1:
        raise HistofastError(f"{' and '.join(given)}: give at most one of level=, mpp=, magnification=")
    if mpp is not None and not _positive(mpp):
        raise HistofastError(f"mpp={mpp!r}: must be a positive number (µm per pixel)")
    if magnification is not None and not _positive(magnification):
        raise HistofastError(f"magnification={magnification!r}: must be a positive number (e.g. 20 for 20×)")


def _view_for_downsample(slide: Slide, target: float, what: str) -> LevelView:
    """The coarsest level at or finer than ``target`` (level-0 pixels per pixel), resampled if needed."""
    if target < 1 - RESAMPLE_TOLERANCE:
        raise HistofastError(f"{what}: finer than the slide's level 0; histofast does not upsample")
    fits = [i for i, d in enumerate(slide.level_downsamples) if d <= target * (1 + RESAMPLE_TOLERANCE)]
    level = fits[-1]
    scale = target / slide.level_downsamples[level]
    return LevelView(slide, level, 1.0 if abs(scale - 1) <= RESAMPLE_TOLERANCE else scale)


def _positive(value: object) -> bool:
    return (isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)
