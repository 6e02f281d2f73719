"""The fast path's stored tiles: levels held as tables of tiles (where each tile's bytes are, how they are coded),
read with ``os.pread`` and decoded in the slide's thread pool, releasing the GIL: JPEG tiles strictly by
libjpeg-turbo in the compiled extension (``ops.decode_jpeg``: corrupt data raise, as in OpenSlide; through
imagecodecs, not strictly, in a build without the libjpeg headers) straight into their place in the caller's
buffer, others by the level's own decoder (tifffile's, for a TIFF page).

``StoredTileSlide`` holds what every such reader shares; ``TiffSlide`` (tiff.py) finds the levels among a TIFF's
pages, ``DicomSlide`` (dicom.py) among a DICOM series' frames. A level is served directly only after one of its
tiles decoded here equals OpenSlide's pixels (``_checked``); OpenSlide reads the rest, and supplies the metadata.

A level (``page``) has ``tilewidth``, ``tilelength``, ``imagewidth``, ``imagelength`` (pixels), ``dataoffsets``
and ``databytecounts`` (per stored tile, row-major; a count of 0: a missing tile, white), ``compression``
(``JPEG`` or a TIFF code its ``decode`` reads), ``jpegtables`` (or None), ``photometric`` and ``is_jfif``."""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import BinaryIO, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from .. import ops
from ..errors import HistofastError, SlideError
from .openslide_slide import OpenSlideSlide
from .remote import RemoteFile
from .slide import BACKGROUND, Job, OnPart, Skip, Slide

JPEG = 7  # TIFF's code for JPEG compression: every reader's levels use it
RGB, YCBCR = 2, 6  # photometric interpretations of the JPEG levels decoded directly
TILES_PER_JOB = 8
FETCH_AHEAD = 8  # a remote slide's jobs whose tiles are fetched ahead of the one decoding (requests in flight)
MAX_CHECK_DIFF = 1  # a level is served directly only if a decoded tile matches OpenSlide this closely


class Metadata(NamedTuple):
    """What OpenSlide would say of a slide: its levels' (width, height) and downsamples, and its properties
    (``openslide.mpp-x``, ``openslide.objective-power``, the vendor's own)."""

    level_dimensions: Sequence[tuple[int, int]]
    level_downsamples: Sequence[float]
    properties: Mapping[str, str]


class StoredTileSlide(Slide):
    """A slide whose levels are decoded directly from their stored tiles: where they match OpenSlide's pixels for a
    local file (``openslide`` reads the other levels and gives the metadata), every level of a remote one (whose
    ``metadata`` the reader parses itself: OpenSlide reads local files only)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, *, openslide: OpenSlideSlide | None = None,
                 metadata: Metadata | None = None) -> None:
        self._openslide = openslide
        if openslide is not None:
            metadata = Metadata(openslide.level_dimensions, openslide.level_downsamples, openslide.properties)
        assert metadata is not None, "a remote slide's reader gives its metadata"
        super().__init__(path, metadata.level_dimensions, metadata.level_downsamples, metadata.properties, threads)
        self._local = threading.local()  # per thread: the scratch tile of scan_jobs
        self._fetcher: ThreadPoolExecutor | None = None
        self._pages: list = [None] * self.level_count  # OpenSlide reads each level until checked

    @property
    def remote(self) -> bool:
        """Whether the slide is read from object storage (no OpenSlide: every level on this path)."""
        return self._openslide is None

    def _serve(self, pages: dict[tuple[int, int], object], why: str = "") -> None:
        """Serve directly each level whose size is among ``pages`` and whose tile checks out (``_checked``); for a
        remote slide every level, or ``SlideError`` naming the one only OpenSlide could read (``why``: its reason)."""
        for level, dims in enumerate(self.level_dimensions):
            if self.remote and dims not in pages:
                raise SlideError(self.path, f"level {level} ({dims[0]}×{dims[1]}) is stored in a way only OpenSlide "
                                            f"reads{why}, and OpenSlide reads local files only: copy the slide to a "
                                            "local disk first")
            self._pages[level] = pages[dims] if self.remote else self._checked(level, pages.get(dims))

    def _reader_of(self, page, index: int) -> Reader | RemoteFile:
        """What reads the bytes of stored tile ``index`` of ``page``."""
        raise NotImplementedError

    @property
    def fetcher(self) -> ThreadPoolExecutor:
        """The threads that fetch a remote slide's tiles ahead of the jobs that decode them (``_Fetches``)."""
        if self._fetcher is None:
            self._fetcher = ThreadPoolExecutor(FETCH_AHEAD, thread_name_prefix="histofast-fetch")
        return self._fetcher

    def close(self) -> None:
        super().close()
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=True)
            self._fetcher = None
        if self._openslide is not None:
            self._openslide.close()

    def _tile_name(self, page, level: int, index: int) -> str:
        """Stored tile ``index`` of ``level``, as error messages name it."""
        return f"level {level} tile {index}"

    @property
    def direct_levels(self) -> tuple[int, ...]:
        """Levels decoded directly from the stored tiles (the others go through OpenSlide)."""
        return tuple(i for i, page in enumerate(self._pages) if page is not None)

    def stored_page(self, level: int):
        """The stored tiles decoded directly for ``level`` (a tifffile page, or a ``DicomLevel``: checked against
        OpenSlide), None if OpenSlide reads it."""
        return self._pages[level]

    def tile_shape(self, level: int) -> tuple[int, int]:
        page = self._pages[level]
        return (page.tilewidth, page.tilelength) if page is not None else self._openslide.tile_shape(level)

    def dct_scales(self, level: int) -> tuple[int, ...]:
        page = self._pages[level]
        if page is None or page.compression != JPEG or not ops.STRICT_JPEG:  # imagecodecs cannot decode scaled
            return ()
        return tuple(s for s in (2, 4, 8) if page.tilewidth % s == 0 and page.tilelength % s == 0)

    def _jobs(self, level: int, x: int, y: int, w: int, h: int, out: np.ndarray,
              on_part: OnPart | None = None, scale: int = 1) -> list[Job]:
        page = self._pages[level]
        if page is None:
            return self._openslide._jobs(level, x, y, w, h, out, on_part)
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
        groups = [parts[i : i + TILES_PER_JOB] for i in range(0, len(parts), TILES_PER_JOB)]
        fetches = _Fetches(self, page, level, [[p[0] for p in group] for group in groups])
        return [self._tiles(page, level, group, on_part, scale, partial(fetches, j)) for j, group in enumerate(groups)]

    def scan_jobs(self, level: int, height: int, on_part: OnPart, skip: Skip | None = None,
                  scale: int = 1) -> list[tuple[int, Job]]:
        page = self._pages[level]
        if page is None:
            return super().scan_jobs(level, height, on_part, skip, scale)
        self._check_scale(level, scale)
        tw, th = page.tilewidth // scale, page.tilelength // scale
        across, width = -(-page.imagewidth // page.tilewidth), page.imagewidth // scale
        groups = []  # (rows done, tiles)
        for y in range(0, height, th):
            row = [(y // th * across + tx, tx * tw, y, min(tw, width - tx * tw), min(th, height - y))
                   for tx in range(across) if tx * tw < width and (skip is None or not skip(
                       tx * tw * scale, y * scale, (tx + 1) * tw * scale, (y + th) * scale))]
            groups += [(min(y + th, height), row[i : i + TILES_PER_JOB]) for i in range(0, len(row), TILES_PER_JOB)]
        fetches = _Fetches(self, page, level, [[t[0] for t in tiles] for _, tiles in groups])
        return [(rows, self._scanned(page, level, tiles, on_part, scale, partial(fetches, j)))
                for j, (rows, tiles) in enumerate(groups)]

    def _scanned(self, page, level: int, tiles: list, on_part: OnPart, scale: int,
                 fetch: Callable[[], list[bytes]]) -> Job:
        """A job decoding stored tiles (at 1/``scale``; their bytes from ``fetch``) into this thread's scratch tile,
        each handed to ``on_part`` while in cache and never written anywhere else: a scan touches no memory beyond a
        tile per thread."""

        counting = getattr(on_part, "white_counts_args", None) if page.compression == JPEG else None
        shape = (page.tilelength // scale, page.tilewidth // scale)

        def job() -> None:
            scratch = self._local.__dict__.get("scratch")
            if scratch is None or scratch.shape[:2] != shape:
                scratch = self._local.scratch = np.empty((*shape, 3), np.uint8)
            datas = fetch()
            if counting is not None and all(datas):  # no sparse tile: decode and count them all in one call
                try:
                    ops.decode_jpegs_counting_white(datas, scratch, np.array([t[1:] for t in tiles], np.int64),
                                                    *counting, tables=page.jpegtables, rgb=_stored_rgb(page),
                                                    scale=scale)
                    return
                except HistofastError:  # the scan fails: name the tile that does not decode
                    for (index, *_), data in zip(tiles, datas):
                        self._decode(page, level, index, data, scratch, scale=scale)
                    raise
            for (index, x, y, w, h), data in zip(tiles, datas):
                part = scratch[:h, :w]
                self._decode(page, level, index, data, part, scale=scale)
                on_part(part, x, y)

        return job

    def _tiles(self, page, level: int, parts: list, on_part: OnPart | None, scale: int,
               fetch: Callable[[], list[bytes]]) -> Job:
        """A job decoding stored tiles (at 1/``scale``; their bytes from ``fetch``), each one's part at (ox, oy)
        straight into its destination, and telling ``on_part`` of it while it is in cache."""

        def job() -> None:
            for (index, ox, oy, dst, x, y), data in zip(parts, fetch()):
                self._decode(page, level, index, data, dst, ox, oy, scale)
                if on_part is not None:
                    on_part(dst, x, y)

        return job

    def _fetch(self, page, level: int, indices: list[int]) -> list[bytes]:
        """The stored bytes of tiles ``indices`` of a level (empty for a sparse file's missing tile), read together
        from each file that holds some (a remote file coalesces them into few requests, sent at once)."""
        by_reader: dict[int, tuple[Reader | RemoteFile, list[int]]] = {}
        for i, index in enumerate(indices):
            if page.databytecounts[index]:
                reader = self._reader_of(page, index)
                by_reader.setdefault(id(reader), (reader, []))[1].append(i)
        datas = [b""] * len(indices)
        for reader, which in by_reader.values():
            got = reader.ranges([(int(page.dataoffsets[indices[i]]), int(page.databytecounts[indices[i]]))
                                 for i in which])
            for i, data in zip(which, got):
                datas[i] = data
        for index, data in zip(indices, datas):
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if len(data) != count:
                raise SlideError(self.path, f"truncated: {self._tile_name(page, level, index)} needs bytes "
                                            f"{offset}..{offset + count}, the file ends first")
        return datas

    def _decode(self, page, level: int, index: int, data: bytes, out: np.ndarray, x: int = 0, y: int = 0,
                scale: int = 1) -> None:
        """Pixels ``[y, y + H) × [x, x + W)`` of stored tile ``index`` of a level, whose stored bytes are ``data``
        (decoded at 1/``scale``: JPEG only), into ``out`` (H, W, 3)."""
        if not data:  # a sparse file's missing tile: OpenSlide shows it transparent, i.e. white
            out[...] = BACKGROUND
            return
        try:
            if page.compression == JPEG:  # strict, as OpenSlide decodes (where ops.STRICT_JPEG): never repaired
                ops.decode_jpeg(data, out, x=x, y=y, tables=page.jpegtables, rgb=_stored_rgb(page), scale=scale)
                return
            tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as e:  # imagecodecs raises one class per codec
            raise SlideError(self.path, f"corrupt tile: {self._tile_name(page, level, index)} does not decode "
                                        f"({e})") from None
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
            self._decode(page, level, index, self._fetch(page, level, [index])[0], mine)
        except SlideError:
            return None  # let OpenSlide read (and report) this level
        theirs = np.empty((h, w, 3), np.uint8)
        self.run(self._openslide._jobs(level, x, y, w, h, theirs))
        return page if np.abs(mine.astype(np.int16) - theirs).max() <= MAX_CHECK_DIFF else None


class _Fetches:
    """The stored bytes of one read's jobs, group ``j`` (a job's tiles) handed to job ``j``: fetched by the job
    itself for a local file; for a remote one, in the background from when job ``j - FETCH_AHEAD`` asks, so that the
    requests of the next jobs are in flight while this one decodes (at most ``FETCH_AHEAD`` groups held ahead)."""

    def __init__(self, slide: StoredTileSlide, page, level: int, groups: list[list[int]]) -> None:
        self._slide, self._page, self._level, self._groups = slide, page, level, groups
        self._futures: dict[int, Future] = {}
        self._next = 0  # the first group not yet asked for
        self._lock = threading.Lock()

    def __call__(self, j: int) -> list[bytes]:
        slide, page, level = self._slide, self._page, self._level
        if not slide.remote:
            return slide._fetch(page, level, self._groups[j])
        with self._lock:
            for k in range(max(self._next, j + 1), min(j + FETCH_AHEAD + 1, len(self._groups))):
                self._futures[k] = slide.fetcher.submit(slide._fetch, page, level, self._groups[k])
            self._next = max(self._next, min(j + FETCH_AHEAD + 1, len(self._groups)))
            future = self._futures.pop(j, None)
        return future.result() if future is not None else slide._fetch(page, level, self._groups[j])


def _stored_rgb(page) -> bool:
    """Whether a JPEG level's samples are RGB without a colour transform (tifffile's rule: Aperio's RGB
    tiles carry no JFIF marker, and libjpeg would otherwise take 3 components for YCbCr)."""
    return page.photometric == RGB and not page.is_jfif


class Reader:
    """Positional reads of one file, safe from many threads (``os.pread`` where the OS has it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = None if hasattr(os, "pread") else threading.Lock()

    def ranges(self, wanted: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, count) range (fewer past the file's end), as ``RemoteFile.ranges``."""
        return [self(offset, count) for offset, count in wanted]

    def __call__(self, offset: int, count: int) -> bytes:
        if self._lock is None:
            return os.pread(self._fd, count, offset)
        with self._lock:
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    def open(self) -> BinaryIO:
        """The file opened for header parsers (tifffile, pydicom), as ``RemoteFile.open``."""
        return open(self.path, "rb")

    def close(self) -> None:
        os.close(self._fd)
