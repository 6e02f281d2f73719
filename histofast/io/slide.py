"""``Slide``: the one reader interface, OpenSlide's names and units, whatever decodes the pixels.

Backends (tiled-TIFF direct decoding, OpenSlide, plain images) only say how to fill a region of a
level; this base class owns validation, the thread pool, white background, thumbnails."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from ..errors import HistofastError, SlideError
from ..renamed import renamed_attribute, renamed_keyword
from .remote import SlideURL

# A job fills part of a region buffer; a region read is a list of independent jobs so a thread pool
# (or the band streamer's prefetch) can run them in any order.
Job = Callable[[], None]
# Told of each filled part of a region, in the decoding thread while the part is hot in cache: the part
# (a view of ``out``) and its (x, y) in level pixels. One that only counts white pixels may say so with a
# ``white_counts_args`` attribute (histofast.tiling.counts.WhiteCounts): a reader may then count in its own
# decoding call instead (the tiled-TIFF fast path's JPEG scan does).
OnPart = Callable[[np.ndarray, int, int], None]
# Whether the level rectangle [x0, x1) × [y0, y1) (level pixels) may be left white without decoding: glass, by the
# thumbnail (histofast.tiling.background); a read honours it per stored tile.
Skip = Callable[[int, int, int, int], bool]
BACKGROUND = 255  # outside the slide is white, like OpenSlide's transparent pixels on white
SCAN_PIECE_TILES = 8  # stored tiles across per scan job: few calls per megapixel, small enough to spread
THUMBNAIL_STRIP_BYTES = 64 << 20  # decoded bytes per strip a thumbnail reads


class Slide:
    """A whole-slide image (or a plain image as a one-level slide).

    Coordinates follow OpenSlide: ``read_region`` takes the top-left corner in level-0 pixels and a
    size in pixels of the requested level. ``read_level_region`` takes both in level pixels.
    Pixels are uint8 RGB (H, W, 3), no alpha; anything outside the slide reads white.
    """

    backend = "base"

    def __init__(
        self,
        path: str | os.PathLike,
        level_dimensions: Iterable[tuple[int, int]],
        level_downsamples: Iterable[float],
        properties: Mapping[str, str],
        threads: int | None = None,
        **deprecated: Any,
    ) -> None:
        threads = renamed_keyword(deprecated, "Slide", "workers", "threads", threads)
        if deprecated:
            raise TypeError(f"Slide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        self.path: Path | SlideURL = path if isinstance(path, SlideURL) else Path(path)  # a remote slide's URL
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple((int(w), int(h)) for w, h in level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in level_downsamples)
        self.properties: dict[str, str] = dict(properties)
        self.threads = threads or os.cpu_count() or 1  # decode threads
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def workers(self) -> int:
        """0.x's name of ``threads`` (read with a ``FutureWarning``)."""
        return renamed_attribute(self, "workers", "threads")

    # -- what the slide is -------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> float | None:
        """µm per level-0 pixel (the mean of x and y when both are known), None when unknown."""
        values = [_float(self.properties.get(f"openslide.mpp-{axis}")) for axis in "xy"]
        known = [v for v in values if v]
        return sum(known) / len(known) if known else None

    @property
    def objective_power(self) -> float | None:
        """The scanner's objective magnification at level 0 (e.g. 40.0), None when unknown."""
        return _float(self.properties.get("openslide.objective-power"))

    @property
    def levels_text(self) -> str:
        """The levels for messages: "0: 16384×16384, 1: 4096×4096"."""
        return ", ".join(f"{i}: {w}×{h}" for i, (w, h) in enumerate(self.level_dimensions))

    def tile_shape(self, level: int) -> tuple[int, int]:
        """(width, height) of the stored tiles of ``level``: reads aligned to it decode each tile once."""
        return (256, 256)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (OpenSlide's rule)."""
        fits = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-9)]
        return fits[-1] if fits else 0

    # -- reading -------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """OpenSlide's ``read_region`` without alpha.

        Args:
            location: (x, y) top-left corner in level-0 pixels.
            level: pyramid level.
            size: (width, height) in pixels of ``level``.
        Returns:
            uint8 (height, width, 3) RGB; outside the slide is white.
        """
        level = self.check_level(level)
        ds = self.level_downsamples[level]
        x, y = (int(np.floor(v / ds)) for v in _pair(location, "location"))
        return self.read_level_region(level, (x, y), size)

    def read_level_region(
        self, level: int, location: tuple[int, int], size: tuple[int, int], out: np.ndarray | None = None
    ) -> np.ndarray:
        """Read a region with its corner and size in pixels of ``level``, decoding in the thread pool.

        Args:
            level: pyramid level.
            location: (x, y) top-left corner, level pixels (may lie outside the slide).
            size: (width, height), level pixels.
            out: optional uint8 (height, width, 3) buffer with packed pixels (rows may be strided).
        Returns:
            ``out`` (or a new array) filled with RGB.
        """
        jobs, out = self.region_jobs(level, location, size, out)
        self.run(jobs)
        return out

    def region_jobs(
        self, level: int, location: tuple[int, int], size: tuple[int, int], out: np.ndarray | None = None,
        on_part: OnPart | None = None, skip: Skip | None = None, scale: int = 1,
    ) -> tuple[list[Job], np.ndarray]:
        """The independent jobs that fill ``out`` with a level region (see ``read_level_region``).

        Parts outside the slide are filled here; the jobs fill the rest, each calling ``on_part`` (if given) with
        every part inside the level it filled (together they cover it once). Stored tiles that ``skip`` says may
        be left white are filled white here, not decoded, and not handed to ``on_part``. With ``scale`` (one of
        ``dct_scales(level)``) the level is read decoded at 1/scale by libjpeg's DCT scaling: ``location``, ``size``
        and the parts are in those pixels (the level's ``floor(w / scale)`` × ``floor(h / scale)``), ``skip``'s
        rectangles in level pixels as always."""
        if self._closed:
            raise SlideError(self.path, "the slide is closed")
        level = self.check_level(level)
        x, y = _pair(location, "location")
        w, h = _pair(size, "size")
        if w <= 0 or h <= 0:
            raise HistofastError(f"size={tuple(size)}: width and height must be positive")
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        elif out.shape != (h, w, 3) or out.dtype != np.uint8 or out.strides[1:] != (3, 1):
            raise HistofastError(f"out: expected uint8 ({h}, {w}, 3) with packed pixels, got {out.dtype} {out.shape}")
        self._check_scale(level, scale)
        lw, lh = self.level_dimensions[level]
        lw, lh = lw // scale, lh // scale
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 >= x1 or y0 >= y1:
            out[...] = BACKGROUND
            return [], out
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            out[...] = BACKGROUND
        if skip is None:
            return self._jobs(level, x0, y0, x1 - x0, y1 - y0, out[y0 - y : y1 - y, x0 - x : x1 - x], on_part,
                              scale), out
        jobs = []
        for rx0, ry0, rx1, ry1, decode in self._runs(level, x0, y0, x1, y1, skip, scale):
            part = out[ry0 - y : ry1 - y, rx0 - x : rx1 - x]
            if decode:
                jobs += self._jobs(level, rx0, ry0, rx1 - rx0, ry1 - ry0, part, on_part, scale)
            else:
                part[...] = BACKGROUND
        return jobs, out

    def _runs(self, level: int, x0: int, y0: int, x1: int, y1: int, skip: Skip,
              scale: int = 1) -> Iterator[tuple[int, int, int, int, bool]]:
        """The level rectangle [x0, x1) × [y0, y1) (pixels at 1/``scale``) as runs of whole stored tiles along each
        stored-tile row, (x0, y0, x1, y1, decode): a run to decode, or one that ``skip`` lets stay white."""
        tw, th = (n // scale for n in self.tile_shape(level))
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            ry0, ry1 = max(y0, ty * th), min(y1, (ty + 1) * th)
            start, decode = x0, None
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                wanted = not skip(tx * tw * scale, ty * th * scale, (tx + 1) * tw * scale, (ty + 1) * th * scale)
                if decode is not None and wanted != decode:
                    yield start, ry0, tx * tw, ry1, decode
                    start = tx * tw
                decode = wanted
            yield start, ry0, x1, ry1, bool(decode)

    def run(self, jobs: list[Job]) -> None:
        """Run jobs in the slide's thread pool and wait; the first failure is raised."""
        if len(jobs) <= 1 or self.threads == 1:
            for job in jobs:
                job()
            return
        for future in [self.pool.submit(job) for job in jobs]:
            future.result()

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The decode thread pool (``threads`` threads), created on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="histofast-decode")
        return self._pool

    def thumbnail(self, max_size: tuple[int, int] = (1024, 1024)) -> np.ndarray:
        """The whole slide, downsampled to fit in ``max_size`` (width, height) pixels.

        The best level is read whole and box-resized; a level over ``THUMBNAIL_STRIP_BYTES`` × 4 decoded (a
        single-level slide, say) is read in strips instead, each reduced by an integer block mean as it
        arrives, so memory stays bounded whatever its size (within a few levels of the one-step result).

        Returns:
            uint8 (h, w, 3) RGB, aspect ratio kept.
        """
        from PIL import Image

        mw, mh = _pair(max_size, "max_size")
        width, height = self.dimensions
        scale = max(width / mw, height / mh, 1.0)
        level = self.get_best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        size = (max(1, round(width / scale)), max(1, round(height / scale)))
        if lw * lh * 3 <= 4 * THUMBNAIL_STRIP_BYTES:
            region = self.read_level_region(level, (0, 0), (lw, lh))
            return np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BOX))
        factor = max(1, min(lw // size[0], lh // size[1]) // 2)  # the final resize still does a 2× box
        rows = factor * max(1, THUMBNAIL_STRIP_BYTES // (lw * 3 * factor))
        reduced = np.empty((lh // factor, lw // factor, 3), np.uint8)
        for y in range(0, reduced.shape[0] * factor, rows):
            h = min(rows, reduced.shape[0] * factor - y)
            strip = self.read_level_region(level, (0, y), (reduced.shape[1] * factor, h))
            blocks = strip.reshape(h // factor, factor, reduced.shape[1], factor, 3)
            reduced[y // factor : (y + h) // factor] = (blocks.mean((1, 3)) + 0.5).astype(np.uint8)
        return np.asarray(Image.fromarray(reduced).resize(size, Image.Resampling.BOX))

    def scan_jobs(self, level: int, height: int, on_part: OnPart, skip: Skip | None = None,
                  scale: int = 1) -> list[tuple[int, Job]]:
        """Jobs that decode rows ``0 .. height`` of a level (full width) once each and hand every decoded part
        to ``on_part(part, x, y)`` (level pixels; ``part`` is valid only during the call): how a level is
        scored without being held in memory. In row order, as ``(rows, job)``: once every job up to the last
        one with this ``rows`` is done, every row above ``rows`` has been handed over. What ``skip`` lets stay
        white is neither decoded nor handed over. ``scale``: as for ``region_jobs`` (rows and parts in pixels at
        1/scale; only where ``dct_scales`` has it, which this reader's never does)."""
        self._check_scale(level, scale)
        width = self.level_dimensions[level][0]
        tw, th = self.tile_shape(level)
        piece = tw * SCAN_PIECE_TILES
        return [(min(y + th, height), self._scan_piece(level, x, y, min(piece, width - x), min(th, height - y),
                                                       on_part))
                for y in range(0, height, th) for x in range(0, width, piece)
                if skip is None or not skip(x, y, min(x + piece, width), min(y + th, height))]

    def _scan_piece(self, level: int, x: int, y: int, w: int, h: int, on_part: OnPart) -> Job:
        def job() -> None:
            for part in self._jobs(level, x, y, w, h, np.empty((h, w, 3), np.uint8), on_part):
                part()

        return job

    def _check_scale(self, level: int, scale: int) -> None:
        """Raise unless ``level`` can be read at 1/``scale`` (1: as stored, always)."""
        if scale != 1 and scale not in self.dct_scales(level):
            raise HistofastError(f"scale={scale}: level {level} of {self.path.name} cannot be decoded scaled (it can "
                                 f"at {list(self.dct_scales(level)) or 'no scale'}: JPEG tiles on the fast path)")

    def dct_scales(self, level: int) -> tuple[int, ...]:
        """The factors ``s`` at which ``level`` can be read decoded at 1/s by libjpeg's DCT scaling
        (``region_jobs(scale=s)``): JPEG tiles on the tiled-TIFF fast path only, so none here."""
        return ()

    # -- backends implement -------------------------------------------------------------------
    def _jobs(self, level: int, x: int, y: int, w: int, h: int, out: np.ndarray,
              on_part: OnPart | None = None, scale: int = 1) -> list[Job]:
        """Jobs that fill ``out`` (h, w, 3) with the level region at (x, y), wholly inside the level, and call
        ``on_part(part, x, y)`` with each part they filled, once filled (``scale``: one of ``dct_scales``, the
        level at 1/scale)."""
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, dimensions={self.dimensions}, "
                f"levels={self.level_count}, mpp={self.mpp})")

    def check_level(self, level: Any) -> int:
        """``level`` as an int; ``HistofastError`` naming the slide's levels when there is no such level."""
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < self.level_count:
            raise HistofastError(f"level={level!r}: {self.path.name} has levels {self.levels_text}")
        return int(level)


def _pair(value: Any, name: str) -> tuple[int, int]:
    try:
        a, b = value
        return int(a), int(b)
    except (TypeError, ValueError):
        raise HistofastError(f"{name}={value!r}: expected two integers") from None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value and np.isfinite(value) and value > 0 else None


def composite_on_white(rgba: np.ndarray, out: np.ndarray) -> None:
    """Write RGBA (straight alpha, as openslide-python and Pillow give it) over white into RGB ``out``."""
    out[...] = rgba[..., :3]
    alpha = rgba[..., 3]
    if (alpha != 255).any():
        a = alpha[..., None].astype(np.uint16)
        out[...] = ((rgba[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
