"""The fast path for tiled TIFFs (Aperio SVS, generic tiled TIFF): the levels are TIFF pages whose stored tiles
are decoded directly (``histofast.io.tiles``); tiles other than JPEG by tifffile's per-tile decoder (imagecodecs:
JPEG 2000, deflate, LZW, …). OpenSlide still supplies the metadata, and reads any level this path cannot match
pixel for pixel."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import SlideError
from ..renamed import renamed_keyword
from ..utils.noise import explained
from .tiles import JPEG, RGB, YCBCR, Reader, StoredTileSlide

# Compressions imagecodecs decodes for tifffile: none, LZW, JPEG, deflate (Adobe and old),
# JPEG 2000 (Aperio YCbCr and RGB, generic), WebP, JPEG XL, zstd.
COMPRESSIONS = {1, 5, 7, 8, 32946, 33003, 33005, 34712, 50000, 50001, 50002, 52546}
VENDORS = ("aperio", "generic-tiff")
SERIES_PAGES = 256  # IFDs beyond which tifffile's series parsing (quadratic) is not used
MAX_TILE_SIDE = 65535  # JPEG's limit: a stored tile larger than this is a corrupt IFD


class TiffSlide(StoredTileSlide):
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
        self._read = Reader(os.fspath(path))
        try:
            with explained(path, "tifffile"):  # its warnings of odd or damaged IFDs: the reason, or the log
                pages = _tiled_pages(self._tif, set(self.level_dimensions), self.path)
            self._serve(pages)
        except BaseException:
            self.close()
            raise

    def _reader_of(self, page, index: int) -> Reader:
        return self._read

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
