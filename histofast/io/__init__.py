"""Slide readers: ``open_slide`` picks the fastest backend that reads a file exactly.

Tiled TIFFs (SVS, generic tiled TIFF) and DICOM WSI series are decoded directly; other OpenSlide formats go
through OpenSlide; plain images through Pillow."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, Sequence

from ..errors import SlideError
from ..renamed import renamed_keyword
from ..utils.noise import explained
from .dicom import DicomSlide, series_file
from .image import ImageSlide
from .openslide_slide import OpenSlideSlide, opened_by_openslide
from .remote import RemoteFile, SlideURL, is_url
from .slide import Slide
from .tiff import VENDORS, TiffSlide

SLIDE_BACKENDS = ("auto", "tiff", "dicom", "openslide", "image")
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order


def open_slide(path: str | os.PathLike | Sequence[str | os.PathLike], *, backend: str = "auto",
               threads: int | None = None, **deprecated: Any) -> Slide:
    """Open a whole-slide image or a plain image, local or in object storage.

    Args:
        path: a slide file (anything OpenSlide reads) or an image (PNG, JPEG, TIFF, …), or a folder holding one
            DICOM WSI series (opened from its first file by name, as OpenSlide opens a series from any of them), or a
            list of a DICOM WSI series' files; or the URL (``https://…``, ``s3://…``) of a tiled TIFF (SVS, generic)
            or of a DICOM WSI instance, folder (``…/``, where the server lists folders) or list of instances: read by
            byte ranges (``histofast.io.remote``; needs ``histofast[remote]``). OpenSlide reads local files only: a
            remote file any of whose levels only OpenSlide reads is a ``SlideError`` saying so.
        backend: "auto" (the fast path where it applies: tiled TIFF, or DICOM WSI; else OpenSlide, else Pillow),
            or force "tiff", "dicom", "openslide" or "image".
        threads: decode threads (default: all CPU cores); ``workers=``, its 0.x name, still works for this
            release with a ``FutureWarning``.
    Returns:
        A ``Slide``; use it as a context manager or call ``close()``.
    Raises:
        SlideError: the file is missing, a directory, or not a readable slide or image.
    """
    import openslide

    threads = renamed_keyword(deprecated, "open_slide", "workers", "threads", threads)
    if deprecated:
        raise TypeError(f"open_slide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
    if backend not in SLIDE_BACKENDS:
        raise SlideError(os.fspath(path) if isinstance(path, (str, os.PathLike)) else "path",
                         f"backend={backend!r}: expected one of {', '.join(SLIDE_BACKENDS)}")
    if not isinstance(path, (str, os.PathLike)):  # a list of a DICOM series' files
        return _open_series(list(path), backend, threads)
    if is_url(path):
        return _open_remote(SlideURL(path), backend, threads)
    path = Path(path)
    if path.is_dir() and backend in ("auto", "dicom", "openslide"):  # a DICOM WSI series: the folder is the slide
        path = series_file(path)
    problem = file_problem(path)
    if problem:
        raise SlideError(path, problem)
    if backend == "image":
        return ImageSlide(path, threads)
    vendor = openslide.OpenSlide.detect_format(os.fspath(path))
    if vendor is None:
        if backend != "auto":
            raise SlideError(path, f"backend={backend!r}: OpenSlide does not recognise this file")
        with explained(path, "tifffile"):  # tifffile's warnings and Pillow's: the reason, or the log
            _not_a_broken_slide(path)
            return ImageSlide(path, threads)
    fast = TiffSlide if vendor in VENDORS else DicomSlide if vendor == "dicom" else None
    if backend == "openslide" or fast is None:
        if backend in ("tiff", "dicom"):
            raise SlideError(path, f"backend={backend!r}: vendor {vendor!r} is not read by that fast path")
        return OpenSlideSlide(path, threads)
    if backend in ("tiff", "dicom") and fast.backend != backend:
        raise SlideError(path, f"backend={backend!r}: this is a {vendor!r} slide (backend={fast.backend!r})")
    slide = fast(path, threads)
    if backend == "auto" and not slide.direct_levels:
        slide.close()
        return OpenSlideSlide(path, threads)
    return slide


def _open_remote(url: SlideURL, backend: str, threads: int | None) -> Slide:
    """A remote slide: a tiled TIFF or DICOM WSI by its first bytes, a DICOM WSI series for a folder (``…/``)."""
    if backend in ("openslide", "image"):
        raise SlideError(url, f"backend={backend!r}: {'OpenSlide' if backend == 'openslide' else 'Pillow'} reads "
                              "local files only (remote slides: backend 'auto', 'tiff' or 'dicom')")
    if url.endswith("/"):
        kind = "dicom"
    else:
        head = RemoteFile(url)
        try:
            first = head(0, 132)
        finally:
            head.close()
        kind = ("tiff" if first[:4] in TIFF_MAGIC else "dicom" if first[128:132] == b"DICM" else None)
    if kind is None:
        raise SlideError(url, "neither a tiled TIFF nor a DICOM WSI instance: other formats are read by OpenSlide "
                              "or Pillow, which read local files only: copy it to a local disk first")
    if backend != "auto" and backend != kind:
        raise SlideError(url, f"backend={backend!r}: this is a {'TIFF' if kind == 'tiff' else 'DICOM'} file "
                              f"(backend={kind!r})")
    return TiffSlide(url, threads) if kind == "tiff" else DicomSlide(url, threads)


def _open_series(files: list[str | os.PathLike], backend: str, threads: int | None) -> Slide:
    """A DICOM WSI series given as its files: URLs (the instances read, none other), or local files of one folder
    (OpenSlide reads the series from their folder)."""
    if not files:
        raise SlideError("path", "an empty list of files: expected a DICOM WSI series' files")
    if backend not in ("auto", "dicom"):
        raise SlideError(os.fspath(files[0]), f"backend={backend!r}: a list of files is a DICOM WSI series "
                                              "(backend 'auto' or 'dicom')")
    if all(is_url(f) for f in files):
        return DicomSlide(files[0], threads, files=files)
    if any(is_url(f) for f in files) or len({Path(f).parent for f in files}) != 1:
        raise SlideError(os.fspath(files[0]), "a series' files must be all local, in one folder, or all URLs")
    return open_slide(files[0], backend="dicom", threads=threads)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a slide file, found before any reader touches it; None when it can be read.

    Missing, a broken or looping symbolic link, a directory, anything but a regular file (a FIFO would
    block a reader forever; a device could be endless), or unreadable. A URL is checked when opened."""
    if is_url(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "no such file"
    except OSError as e:
        return "a symbolic link loop" if e.errno == errno.ELOOP else f"cannot be examined ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a slide file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device): a reader could wait on it forever"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def _not_a_broken_slide(path: Path) -> None:
    """Raise for a tiled TIFF OpenSlide rejects (a damaged slide): it must not open as a flat image."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tiled = tif.pages.first.is_tiled
    except Exception:  # not a TIFF, or not even a readable one: Pillow decides
        return
    if tiled:
        opened_by_openslide(path, "a tiled TIFF that OpenSlide cannot read ({})").close()
        raise SlideError(path, "a tiled TIFF that OpenSlide does not recognise")


class opened:
    """Use an open ``Slide`` as it is, or open a path for the duration of a ``with`` block."""

    def __init__(self, slide: Slide | str | os.PathLike) -> None:
        self._owned = not isinstance(slide, Slide)
        self.slide = open_slide(slide) if self._owned else slide

    def __enter__(self) -> Slide:
        return self.slide

    def __exit__(self, *exc: Any) -> None:
        if self._owned:
            self.slide.close()


__all__ = ["DicomSlide", "ImageSlide", "OpenSlideSlide", "SLIDE_BACKENDS", "Slide", "SlideURL", "TiffSlide",
           "file_problem", "is_url", "open_slide", "opened"]
