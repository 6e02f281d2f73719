"""OpenSlide as a ``Slide`` backend: every vendor format OpenSlide reads (SVS, NDPI, MRXS, …).

Regions are read in pieces aligned to the stored tiles, in parallel (OpenSlide handles are
thread-safe), and composited onto white where OpenSlide reports transparent pixels."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import SlideError
from ..renamed import renamed_keyword
from ..utils.noise import explained
from .slide import Job, OnPart, Slide, composite_on_white

PIECE_TILES = 4  # pieces of 4×4 stored tiles: big enough to amortise a call, small enough to spread


class OpenSlideSlide(Slide):
    """A slide read through ``openslide.OpenSlide``; metadata (``properties``) always comes from it."""

    backend = "openslide"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, **deprecated: Any) -> None:
        threads = renamed_keyword(deprecated, "OpenSlideSlide", "workers", "threads", threads)
        if deprecated:
            raise TypeError(f"OpenSlideSlide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        self._osr = opened_by_openslide(path)
        super().__init__(path, self._osr.level_dimensions, self._osr.level_downsamples,
                         self._osr.properties, threads)

    def tile_shape(self, level: int) -> tuple[int, int]:
        get = self.properties.get
        w, h = get(f"openslide.level[{level}].tile-width"), get(f"openslide.level[{level}].tile-height")
        return (int(w), int(h)) if w and h else super().tile_shape(level)

    def _jobs(self, level: int, x: int, y: int, w: int, h: int, out: np.ndarray,
              on_part: OnPart | None = None, scale: int = 1) -> list[Job]:  # scale: 1 (no dct_scales here)
        tw, th = self.tile_shape(level)
        pw, ph = tw * PIECE_TILES, th * PIECE_TILES
        jobs = []
        # Piece edges on multiples of the stored tile size, so each stored tile is decoded once.
        for py in range(y - y % ph, y + h, ph):
            for px in range(x - x % pw, x + w, pw):
                x0, y0 = max(px, x), max(py, y)
                x1, y1 = min(px + pw, x + w), min(py + ph, y + h)
                jobs.append(self._piece(level, x0, y0, x1 - x0, y1 - y0, out[y0 - y : y1 - y, x0 - x : x1 - x],
                                        on_part))
        return jobs

    def _piece(self, level: int, x: int, y: int, w: int, h: int, out: np.ndarray, on_part: OnPart | None) -> Job:
        def job() -> None:
            import openslide

            ds = self.level_downsamples[level]
            try:
                rgba = np.asarray(self._osr.read_region((round(x * ds), round(y * ds)), level, (w, h)))
            except openslide.OpenSlideError as e:
                raise openslide_error(self.path, e, f"level {level} region ({x}, {y}, {w}, {h})") from None
            composite_on_white(rgba, out)
            if on_part is not None:
                on_part(out, x, y)

        return job

    def close(self) -> None:
        super().close()
        self._osr.close()


def opened_by_openslide(path: str | os.PathLike, reason: str | None = None):
    """``openslide.OpenSlide(path)``, what its libraries print on file descriptor 2 meanwhile captured (a few
    tens of µs; the capture is process-wide, so only around opening: reads go uncaptured, and OpenSlide's read
    errors carry libtiff's and libjpeg's messages themselves). ``SlideError`` if OpenSlide cannot open the file:
    ``openslide_error``'s, or ``reason`` with the OpenSlide error in its ``{}``."""
    import openslide

    with explained(path, "OpenSlide", stderr=True):
        try:
            return openslide.OpenSlide(os.fspath(path))
        except openslide.OpenSlideError as e:
            raise (openslide_error(path, e) if reason is None else SlideError(path, reason.format(e))) from None


def openslide_error(path: str | os.PathLike, error: Exception, where: str = "") -> SlideError:
    """A ``SlideError`` for an OpenSlide failure, saying where it happened."""
    return SlideError(path, f"OpenSlide {'failed at ' + where + ': ' if where else ''}{error}")
