"""Which pixels a grid is cut from: a slide level, or a level resampled on the fly to a target µm/pixel.

``select_level`` turns ``level=`` / ``mpp=`` / ``magnification=`` into a ``LevelView``; the view reads
regions in its own pixels, the same way whatever piece of it is read."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import HistofastError
from .resampled import ResampledReads
from .slide import Job, OnPart, Skip, Slide

RESAMPLE_TOLERANCE = 0.05  # within 5% of the target, a level is used as it is (or decoded at 1/2, 1/4, 1/8)
RESAMPLE = ("triangle", "dct")  # how a view between levels is made (GridSpec.resample)
log = logging.getLogger("histofast")


@dataclass(frozen=True)
class LevelView:
    """Pixels of ``slide`` level ``level``, resampled by ``scale`` (level pixels per view pixel; 1 = as stored).

    A resampled view has ``(floor(w / scale), floor(h / scale))`` pixels; view pixel (x, y) is centred
    on level position ((x + ½)·scale, (y + ½)·scale) and filtered with an antialiased triangle
    (bilinear) kernel of radius ``scale``, in fixed point (``ops.triangle_taps``, ``ops.resample``: the
    same integers on any device). Its weights depend only on the pixel's position, so a region reads the
    same however the view is cut into pieces (``histofast.io.resampled``).

    ``dct`` (``GridSpec(resample="dct")``; ``scale`` then 2, 4 or 8, one of ``slide.dct_scales(level)``): the
    view is the level decoded at 1/scale by libjpeg's DCT scaling instead, tile by tile (view pixel (x, y) made
    from the level's scale×scale block at (x·scale, y·scale), close to its mean: libjpeg's scaled inverse DCT).

    ``skip``, when set (``GridSpec(skip_background=True)``), says which level rectangles may stay white without
    being decoded: every read of the view leaves those stored tiles white (``Slide.region_jobs``)."""

    slide: Slide
    level: int
    scale: float = 1.0
    skip: Skip | None = None
    dct: bool = False

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) in view pixels."""
        w, h = self.slide.level_dimensions[self.level]
        return (w, h) if self.scale == 1.0 else (int(w / self.scale), int(h / self.scale))

    @property
    def resample(self) -> str:
        """How the view is made from its level, as ``GridSpec.resample`` names it (a level as stored: "triangle",
        the default)."""
        return "dct" if self.dct else "triangle"

    @property
    def stored(self) -> int:
        """What ``Slide.region_jobs``/``scan_jobs`` read this view as: its ``scale`` for a DCT-scaled view, 1 for
        the level as stored; 0 for a view resampled here (``histofast.io.resampled``)."""
        return int(self.scale) if self.dct else 1 if self.scale == 1.0 else 0

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
        return self.slide.tile_shape(self.level)[1] // self.stored if self.stored else 1

    def jobs(self, x: int, y: int, w: int, h: int, out: np.ndarray, on_part: OnPart | None = None) -> list[Job]:
        """Jobs filling ``out`` uint8 (h, w, 3) with the view region at (x, y), view pixels; each calls
        ``on_part(part, x, y)`` (view pixels) with the parts it filled, as ``Slide.region_jobs`` does."""
        if self.stored:
            return self.slide.region_jobs(self.level, (x, y), (w, h), out, on_part, self.skip, self.stored)[0]
        return self._resampled.region_jobs(x, y, w, h, out, on_part)

    def scan_jobs(self, height: int, on_part: OnPart) -> list[tuple[int, Job]]:
        """``Slide.scan_jobs`` for the view: rows ``0 .. height`` decoded once each, every part handed to
        ``on_part(part, x, y)`` (view pixels) and not kept; ``(rows, job)`` in row order."""
        if self.stored:
            return self.slide.scan_jobs(self.level, height, on_part, self.skip, self.stored)
        return self._resampled.scan_jobs(height, on_part)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The view region at (x, y) of size (w, h), view pixels: uint8 (h, w, 3)."""
        out = np.empty((h, w, 3), np.uint8)
        self.slide.run(self.jobs(x, y, w, h, out))
        return out

    @cached_property
    def _resampled(self) -> ResampledReads:
        return ResampledReads(self)


def select_level(
    slide: Slide, level: int | None = None, mpp: float | None = None, magnification: float | None = None,
    resample: str = "triangle",
) -> LevelView:
    """The view a grid is cut from: ``level`` as stored, or the pixels nearest ``mpp`` / ``magnification``.

    For ``mpp`` (µm per pixel) and ``magnification`` (e.g. 20 for 20×) the closest level at or finer
    than the target is chosen, and resampled when it differs from the target by more than 5%: by the triangle
    filter (``resample="triangle"``, the default), or, with ``resample="dct"``, decoded at 1/2, 1/4 or 1/8 by
    libjpeg's DCT scaling where the level is JPEG on the fast path and the factor is within 5% of one of those
    (else by the triangle filter, with a warning in the log; ``LevelView.dct`` says which).
    """
    check_view_args(level, mpp, magnification, resample)
    if mpp is not None:
        if slide.mpp is None:
            raise HistofastError(f"mpp={mpp}: {slide.path.name} has no µm-per-pixel metadata; "
                                 f"choose a level with level= instead (levels {slide.levels_text})")
        return _view_for_downsample(slide, mpp / slide.mpp, f"mpp={mpp} (level 0 is {slide.mpp:.4g} µm/pixel)",
                                    resample)
    if magnification is not None:
        if slide.objective_power is None:
            raise HistofastError(f"magnification={magnification}: {slide.path.name} has no objective-power metadata; "
                                 f"choose a level with level= instead (levels {slide.levels_text})")
        return _view_for_downsample(slide, slide.objective_power / magnification,
                                    f"magnification={magnification} (level 0 is {slide.objective_power:g}×)", resample)
    return LevelView(slide, slide.check_level(0 if level is None else level))


def check_view_args(level: object, mpp: object, magnification: object, resample: object = "triangle") -> None:
    """What ``select_level`` needs of any slide, checkable before one is read: at most one of ``level``, ``mpp``
    (µm per pixel) and ``magnification``, the last two positive and finite; ``resample`` one of ``RESAMPLE``.
    (``level`` is checked against each slide's levels by ``select_level``.)"""
    if not isinstance(resample, str) or resample not in RESAMPLE:
        raise HistofastError(f"resample={resample!r}: expected 'triangle' (the antialiased filter, exact) or 'dct' "
                             "(JPEG levels decoded at 1/2, 1/4 or 1/8 by libjpeg's DCT scaling)")
    given = [name for name, v in (("level", level), ("mpp", mpp), ("magnification", magnification)) if v is not None]
    if len(given) > 1:
        raise HistofastError(f"{' and '.join(given)}: give at most one of level=, mpp=, magnification=")
    if mpp is not None and not _positive(mpp):
        raise HistofastError(f"mpp={mpp!r}: must be a positive number (µm per pixel)")
    if magnification is not None and not _positive(magnification):
        raise HistofastError(f"magnification={magnification!r}: must be a positive number (e.g. 20 for 20×)")


def _view_for_downsample(slide: Slide, target: float, what: str, resample: str) -> LevelView:
    """The coarsest level at or finer than ``target`` (level-0 pixels per pixel), resampled if needed."""
    if target < 1 - RESAMPLE_TOLERANCE:
        raise HistofastError(f"{what}: finer than the slide's level 0; histofast does not upsample")
    fits = [i for i, d in enumerate(slide.level_downsamples) if d <= target * (1 + RESAMPLE_TOLERANCE)]
    level = fits[-1]
    scale = target / slide.level_downsamples[level]
    if abs(scale - 1) <= RESAMPLE_TOLERANCE:
        return LevelView(slide, level)
    if resample == "dct":
        near = [s for s in slide.dct_scales(level) if abs(scale / s - 1) <= RESAMPLE_TOLERANCE]
        if near:
            return LevelView(slide, level, float(near[0]), dct=True)
        can = slide.dct_scales(level)
        log.warning("%s: %s resamples level %d by %.3g×, which resample='dct' cannot (%s): resampled by the triangle "
                    "filter instead", slide.path.name, what, level, scale,
                    f"it decodes this level at 1/{', 1/'.join(map(str, can))} only" if can else
                    "this level is not JPEG tiles read by the fast path")
    return LevelView(slide, level, scale)


def _positive(value: object) -> bool:
    return (isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)
