"""The fast path for tiled TIFFs (Aperio SVS, generic tiled TIFF): stored tiles decoded directly.

Tile bytes are read with ``os.pread`` and decoded in the slide's thread pool, releasing the GIL: JPEG
tiles strictly by libjpeg-turbo in the compiled extension (``ops.decode_jpeg``: corrupt data raise, as
in OpenSlide; through imagecodecs, not strictly, in a build without the libjpeg headers) straight into
their place in the caller's buffer, others by tifffile's per-tile decoder (imagecodecs: JPEG 2000,
deflate, LZW, …).
OpenSlide still supplies the metadata, and reads any level this path cannot match pixel for pixel."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import ops
from ..errors import HistofastError, SlideError
from ..renamed import renamed_keyword
from ..utils.noise import explained
from .openslide_slide import OpenSlideSlide
from .slide import BACKGROUND, Job, OnPart, Skip

# Compressions imagecodecs decodes for tifffile: none, LZW, JPEG, deflate (Adobe and old),
# JPEG 2000 (Aperio YCbCr and RGB, generic), WebP, JPEG XL, zstd.
COMPRESSIONS = {1, 5, 7, 8, 32946, 33003, 33005, 34712, 50000, 50001, 50002, 52546}
JPEG = 7
RGB, YCBCR = 2, 6  # photometric interpretations of the JPEG pages decoded directly
VENDORS = ("aperio", "generic-tiff")
TILES_PER_JOB = 8
MAX_CHECK_DIFF = 1  # a level is served directly only if a decoded tile matches OpenSlide this closely
SERIES_PAGES = 256  # IFDs beyond which tifffile's series parsing (quadratic) is not used
MAX_TILE_SIDE = 65535  # JPEG's limit: a stored tile larger than this is a corrupt IFD


class TiffSlide(OpenSlideSlide):
    """A tiled TIFF whose levels are decoded directly where they match OpenSlide's pixels."""

    backend = "tiff"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, **deprecated: Any) -> None:
        import tifffile

        threads = renamed_keyword(deprecated, "TiffSlide", "workers", "threads", threads)
        if deprecated:
            raise TypeError(f"TiffSlide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        super().__init__(path, threads)
        try:
            with explained(path, "tifffile"):
                self._tif = tifffile.TiffFile(os.fspath(path))
        except Exception:
            self._osr.close()
            raise
        self._read = _reader(os.fspath(path))
        self._local = threading.local()  # per thread: the scratch tile of scan_jobs
        self._pages: list = [None] * self.level_count  # OpenSlide reads each level until checked
        try:
            with explained(path, "tifffile"):  # its warnings of odd or damaged IFDs: the reason, or the log
                pages = _tiled_pages(self._tif, set(self.level_dimensions), self.path)
            for level, dims in enumerate(self.level_dimensions):
                self._pages[level] = self._checked(level, pages.get(dims))
        except BaseException:
            self.close()
            raise

    @property
    def direct_levels(self) -> tuple[int, ...]:
        """Levels decoded directly from the stored tiles (the others go through OpenSlide)."""
        return tuple(i for i, page in enumerate(self._pages) if page is not None)

    def stored_page(self, level: int):
        """The tifffile page decoded directly for ``level`` (checked against OpenSlide), None if OpenSlide reads it."""
        return self._pages[level]

    def tile_shape(self, level: int) -> tuple[int, int]:
        page = self._pages[level]
        return (page.tilewidth, page.tilelength) if page is not None else super().tile_shape(level)

    def dct_scales(self, level: int) -> tuple[int, ...]:
        page = self._pages[level]
        if page is None or page.compression != JPEG or not ops.STRICT_JPEG:  # imagecodecs cannot decode scaled
            return ()
        return tuple(s for s in (2, 4, 8) if page.tilewidth % s == 0 and page.tilelength % s == 0)

    def _jobs(self, level: int, x: int, y: int, w: int, h: int, out: np.ndarray,
              on_part: OnPart | None = None, scale: int = 1) -> list[Job]:
        page = self._pages[level]
        if page is None:
            return super()._jobs(level, x, y, w, h, out, on_part)
        tw, th = page.tilewidth // scale, page.tilelength // scale
        across = -(-page.imagewidth // page.tilewidth)
        parts = []  # (tile index, x and y inside the tile, destination, its x and y in the level)
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                x0, y0 = max(tx * tw, x), max(ty * th, y)
                x1, y1 = min((tx + 1) * tw, x + w), min((ty + 1) * th, y + h)
                parts.append((ty * across + tx, x0 - tx * tw, y0 - ty * th, out[y0 - y : y1 - y, x0 - x : x1 - x],
                              x0, y0))
        # A few tiles per job: fewer futures (and GIL hand-offs) per decoded megapixel.
        return [self._tiles(page, level, parts[i : i + TILES_PER_JOB], on_part, scale)
                for i in range(0, len(parts), TILES_PER_JOB)]

    def scan_jobs(self, level: int, height: int, on_part: OnPart, skip: Skip | None = None,
                  scale: int = 1) -> list[tuple[int, Job]]:
        page = self._pages[level]
        if page is None:
            return super().scan_jobs(level, height, on_part, skip)
        tw, th = page.tilewidth // scale, page.tilelength // scale
        across, width = -(-page.imagewidth // page.tilewidth), page.imagewidth // scale
        jobs = []
        for y in range(0, height, th):
            row = [(y // th * across + tx, tx * tw, y, min(tw, width - tx * tw), min(th, height - y))
                   for tx in range(across) if tx * tw < width and (skip is None or not skip(
                       tx * tw * scale, y * scale, (tx + 1) * tw * scale, (y + th) * scale))]
            jobs += [(min(y + th, height), self._scanned(page, level, row[i : i + TILES_PER_JOB], on_part, scale))
                     for i in range(0, len(row), TILES_PER_JOB)]
        return jobs

    def _scanned(self, page, level: int, tiles: list, on_part: OnPart, scale: int) -> Job:
        """A job decoding stored tiles (at 1/``scale``) into this thread's scratch tile, each handed to ``on_part``
        while in cache and never written anywhere else: a scan touches no memory beyond a tile per thread."""

        counting = getattr(on_part, "white_counts_args", None) if page.compression == JPEG else None
        shape = (page.tilelength // scale, page.tilewidth // scale)

        def job() -> None:
            scratch = self._local.__dict__.get("scratch")
            if scratch is None or scratch.shape[:2] != shape:
                scratch = self._local.scratch = np.empty((*shape, 3), np.uint8)
            if counting is not None:
                datas = [self._bytes(page, level, index) for index, *_ in tiles]
                if all(datas):  # no sparse tile: decode and count them all in one call
                    try:
                        ops.decode_jpegs_counting_white(datas, scratch, np.array([t[1:] for t in tiles], np.int64),
                                                        *counting, tables=page.jpegtables, rgb=_stored_rgb(page),
                                                        scale=scale)
                        return
                    except HistofastError:  # the scan fails: name the tile that does not decode
                        for index, *_ in tiles:
                            self._decode(page, level, index, scratch, scale=scale)
                        raise
            for index, x, y, w, h in tiles:
                part = scratch[:h, :w]
                self._decode(page, level, index, part, scale=scale)
                on_part(part, x, y)

        return job

    def _tiles(self, page, level: int, parts: list, on_part: OnPart | None, scale: int) -> Job:
        """A job decoding stored tiles (at 1/``scale``), each one's part at (ox, oy) straight into its
        destination, and telling ``on_part`` of it while it is in cache."""

        def job() -> None:
            for index, ox, oy, dst, x, y in parts:
                self._decode(page, level, index, dst, ox, oy, scale)
                if on_part is not None:
                    on_part(dst, x, y)

        return job

    def _bytes(self, page, level: int, index: int) -> bytes:
        """The stored bytes of tile ``index`` of a level (empty for a sparse file's missing tile)."""
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        data = self._read(offset, count) if count else b""
        if len(data) != count:
            raise SlideError(self.path, f"truncated: level {level} tile {index} needs bytes "
                                        f"{offset}..{offset + count}, the file ends first")
        return data

    def _decode(self, page, level: int, index: int, out: np.ndarray, x: int = 0, y: int = 0, scale: int = 1) -> None:
        """Pixels ``[y, y + H) × [x, x + W)`` of stored tile ``index`` of a level (decoded at 1/``scale``: JPEG
        only) into ``out`` (H, W, 3)."""
        data = self._bytes(page, level, index)
        if not data:  # a sparse file's missing tile: OpenSlide shows it transparent, i.e. white
            out[...] = BACKGROUND
            return
        try:
            if page.compression == JPEG:  # strict, as OpenSlide decodes (where ops.STRICT_JPEG): never repaired
                ops.decode_jpeg(data, out, x=x, y=y, tables=page.jpegtables, rgb=_stored_rgb(page), scale=scale)
                return
            tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as e:  # imagecodecs raises one class per codec
            raise SlideError(self.path, f"corrupt tile: level {level} tile {index} does not decode ({e})") from None
        out[...] = tile[0, y : y + out.shape[0], x : x + out.shape[1], :3]

    def _checked(self, level: int, page):
        """``page`` if it is decodable and one of its tiles equals OpenSlide's pixels; else None."""
        if page is None:
            return None
        # OpenSlide reads level pixel x at level-0 x·downsample, blending when that is fractional:
        # compare at the origin then, which maps exactly at any downsample.
        index = len(page.dataoffsets) // 2 if self.level_downsamples[level].is_integer() else 0
        across = -(-page.imagewidth // page.tilewidth)
        x, y = (index % across) * page.tilewidth, (index // across) * page.tilelength
        w = min(page.tilewidth, page.imagewidth - x)
        h = min(page.tilelength, page.imagelength - y)
        mine = np.empty((h, w, 3), np.uint8)
        try:
            self._decode(page, level, index, mine)
        except SlideError:
            return None  # let OpenSlide read (and report) this level
        theirs = np.empty((h, w, 3), np.uint8)
        self.run(super()._jobs(level, x, y, w, h, theirs))
        return page if np.abs(mine.astype(np.int16) - theirs).max() <= MAX_CHECK_DIFF else None

    def close(self) -> None:
        super().close()
        self._tif.close()
        self._read.close()


def _tiled_pages(tif, wanted: set[tuple[int, int]], path: Path) -> dict[tuple[int, int], object]:
    """Tiled 8-bit RGB pages the fast path can decode, by (width, height); the first one wins; the search
    stops once every size in ``wanted`` (the levels') is found. Pages with an alpha (or any extra) sample go
    to OpenSlide, which composites them on white: a check of one tile at open could not vouch for the
    transparent ones.

    tifffile's series (which find SubIFD pyramids) take time quadratic in the IFDs: a file with more IFDs
    than any pyramid has (``SERIES_PAGES``) is searched along its main IFD chain only, as is a file whose
    series tifffile cannot parse (a corrupt IFD).

    Raises:
        SlideError: a level's page claims stored tiles larger than ``MAX_TILE_SIDE`` (a corrupt IFD on which
            OpenSlide would abort the whole process), or a tile table that does not cover its image (OpenSlide
            would read the missing tiles as transparent, for minutes on a claimed 50000² level)."""
    candidates: Iterator = iter(tif.pages)
    if len(tif.pages) <= SERIES_PAGES:
        try:
            candidates = iter([page for series in tif.series for level in series.levels for page in level.pages])
        except Exception:  # tifffile's own errors on a corrupt IFD (e.g. ZeroDivisionError for a width of 0)
            pass
    pages: dict[tuple[int, int], object] = {}
    for page in candidates:
        ok = (page is not None and page.is_tiled and page.compression in COMPRESSIONS
              and page.bitspersample == 8 and page.samplesperpixel == 3
              and page.planarconfig == 1 and page.imagedepth == 1
              and (page.compression != JPEG or page.photometric in (RGB, YCBCR)))
        if ok and (page.imagewidth, page.imagelength) in wanted:
            tw, th = page.tilewidth, page.tilelength
            if not (0 < tw <= MAX_TILE_SIDE and 0 < th <= MAX_TILE_SIDE):
                raise SlideError(path, f"the IFD at byte {page.offset} ({page.imagewidth}×{page.imagelength} "
                                       f"pixels) claims stored tiles of {tw}×{th} pixels: a corrupt TIFF")
            need = -(-page.imagewidth // tw) * -(-page.imagelength // th)
            if len(page.dataoffsets) != need:
                raise SlideError(path, f"the IFD at byte {page.offset} ({page.imagewidth}×{page.imagelength} "
                                       f"pixels in {tw}×{th} tiles) needs {need} tiles, its tile table holds "
                                       f"{len(page.dataoffsets)}: a corrupt TIFF")
        if ok:
            pages.setdefault((page.imagewidth, page.imagelength), page)
            if wanted <= pages.keys():
                break
    return pages


def _stored_rgb(page) -> bool:
    """Whether a JPEG page's samples are RGB without a colour transform (tifffile's rule: Aperio's RGB
    tiles carry no JFIF marker, and libjpeg would otherwise take 3 components for YCbCr)."""
    return page.photometric == RGB and not page.is_jfif


class _reader:
    """Positional reads of one file, safe from many threads (``os.pread`` where the OS has it)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = None if hasattr(os, "pread") else threading.Lock()

    def __call__(self, offset: int, count: int) -> bytes:
        if self._lock is None:
            return os.pread(self._fd, count, offset)
        with self._lock:
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    def close(self) -> None:
        os.close(self._fd)
