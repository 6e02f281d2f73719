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
from .openslide_slide import OpenSlideSlide
from .remote import RemoteFile, SlideURL, is_url
from .tiles import JPEG, RGB, YCBCR, Metadata, Reader, StoredTileSlide

# Compressions imagecodecs decodes for tifffile: none, LZW, JPEG, deflate (Adobe and old),
# JPEG 2000 (Aperio YCbCr and RGB, generic), WebP, JPEG XL, zstd.
COMPRESSIONS = {1, 5, 7, 8, 32946, 33003, 33005, 34712, 50000, 50001, 50002, 52546}
VENDORS = ("aperio", "generic-tiff")
SERIES_PAGES = 256  # IFDs beyond which tifffile's series parsing (quadratic) is not used
MAX_TILE_SIDE = 65535  # JPEG's limit: a stored tile larger than this is a corrupt IFD
# tifffile's flags of TIFF-based formats only OpenSlide reads (OpenSlide detects them before generic-tiff).
ONLY_OPENSLIDE = (("is_ndpi", "Hamamatsu NDPI"), ("is_philips", "Philips TIFF"), ("is_scn", "Leica SCN"),
                  ("is_bif", "Ventana BIF"))


class TiffSlide(StoredTileSlide):
    """A tiled TIFF whose levels are decoded directly where they match OpenSlide's pixels; or a remote one
    (``https://``, ``s3://``: every level decoded directly, its metadata parsed here as OpenSlide would give it)."""

    backend = "tiff"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, **deprecated: Any) -> None:
        import tifffile

        threads = renamed_keyword(deprecated, "TiffSlide", "workers", "threads", threads)
        if deprecated:
            raise TypeError(f"TiffSlide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        remote = is_url(path)
        self._read: Reader | RemoteFile = RemoteFile(path) if remote else None
        openslide = None if remote else OpenSlideSlide(path, threads)
        self._tif = None
        try:
            with explained(path, "tifffile"):
                self._tif = (tifffile.TiffFile(self._read.open(), name=self._read.url.name) if remote
                             else tifffile.TiffFile(os.fspath(path)))
                super().__init__(self._read.url if remote else path, threads, openslide=openslide,
                                 metadata=_metadata(self._tif, self._read.url) if remote else None)
                if not remote:
                    self._read = Reader(os.fspath(path))
                # its warnings of odd or damaged IFDs: the reason, or the log
                pages = _tiled_pages(self._tif, set(self.level_dimensions), self.path)
            self._serve(pages, " (not 8-bit RGB tiles in a compression imagecodecs decodes)")
        except BaseException:
            for part in (self._tif, self._read, openslide):
                if part is not None:
                    part.close()
            raise

    def _reader_of(self, page, index: int) -> Reader | RemoteFile:
        return self._read

    def close(self) -> None:
        super().close()
        self._tif.close()
        self._read.close()


def _metadata(tif, url: SlideURL) -> Metadata:
    """A remote TIFF's levels and properties as OpenSlide gives them for a local copy: Aperio's levels are its tiled
    pages in file order, a generic tiled TIFF's all its tiled pages by width, largest first; a downsample is the mean
    of the width and height ratios to level 0; ``openslide.mpp-x``/``-y`` and ``openslide.objective-power`` come
    from Aperio's ``MPP`` and ``AppMag`` (its description's ``key = value`` items, also given as ``aperio.key``), or
    from a generic TIFF's resolution tags.

    Raises:
        SlideError: a vendor format only OpenSlide reads (NDPI, Philips, Leica SCN, Ventana BIF), or not tiled."""
    first = tif.pages.first
    description = first.description or ""
    properties = {"tiff.ImageDescription": description} if description else {}
    if description.startswith("Aperio"):
        vendor = "aperio"
        items = dict(item.split("=", 1) for item in description.split("|")[1:] if "=" in item)
        properties.update({f"aperio.{k.strip()}": v.strip() for k, v in items.items()})
        mpp = properties.get("aperio.MPP")
        properties.update({"openslide.mpp-x": mpp, "openslide.mpp-y": mpp} if mpp else {})
        if properties.get("aperio.AppMag"):
            properties["openslide.objective-power"] = properties["aperio.AppMag"]
    else:
        for flag, name in ONLY_OPENSLIDE:
            if getattr(tif, flag, False):
                raise SlideError(url.shown, f"a {name} slide: only OpenSlide reads it, and OpenSlide reads local "
                                            "files only: copy the slide to a local disk first")
        if not first.is_tiled:
            raise SlideError(url.shown, "not a tiled TIFF (a remote file must be a tiled TIFF, an SVS or a DICOM WSI "
                                        "series)")
        vendor = "generic-tiff"
        unit = {2: 25400.0, 3: 10000.0}.get(int(first.tags.valueof("ResolutionUnit", 1)))  # µm per inch, per cm
        for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
            resolution = first.tags.valueof(tag)
            if unit and resolution and resolution[0] and resolution[1]:
                properties[f"openslide.mpp-{axis}"] = repr(unit * resolution[1] / resolution[0])
    pages = [page for page in tif.pages if page.is_tiled]
    if vendor == "generic-tiff":
        pages.sort(key=lambda page: -page.imagewidth)
    properties["openslide.vendor"] = vendor
    dims = [(page.imagewidth, page.imagelength) for page in pages]
    (w0, h0) = dims[0]
    for level, page in enumerate(pages):
        properties[f"openslide.level[{level}].tile-width"] = str(page.tilewidth)
        properties[f"openslide.level[{level}].tile-height"] = str(page.tilelength)
    return Metadata(dims, [(w0 / w + h0 / h) / 2 for w, h in dims], properties)


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
