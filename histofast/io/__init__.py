"""Slide readers: ``open_slide`` picks the fastest backend that reads a file exactly.

Tiled TIFFs (SVS, generic tiled TIFF) are decoded directly; other OpenSlide formats go through
OpenSlide; plain images through Pillow."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SlideError
from .image import ImageSlide
from .openslide_slide import OpenSlideSlide
from .slide import Slide
from .tiff import VENDORS, TiffSlide

SLIDE_BACKENDS = ("auto", "tiff", "openslide", "image")


def open_slide(path: str | os.PathLike, *, backend: str = "auto", workers: int | None = None) -> Slide:
    """Open a whole-slide image or a plain image.

    Args:
        path: a slide file (anything OpenSlide reads) or an image (PNG, JPEG, TIFF, …).
        backend: "auto" (the tiled-TIFF fast path where it applies, else OpenSlide, else Pillow),
            or force "tiff", "openslide" or "image".
        workers: decode threads (default: all CPU cores).
    Returns:
        A ``Slide``; use it as a context manager or call ``close()``.
    Raises:
        SlideError: the file is missing, a directory, or not a readable slide or image.
    """
    import openslide

    path = Path(path)
    if backend not in SLIDE_BACKENDS:
        raise SlideError(path, f"backend={backend!r}: expected one of {', '.join(SLIDE_BACKENDS)}")
    if not path.exists():
        raise SlideError(path, "no such file")
    if path.is_dir():
        raise SlideError(path, "is a directory, not a slide file")
    if not os.access(path, os.R_OK):
        raise SlideError(path, "not readable (permission denied)")
    if backend == "image":
        return ImageSlide(path, workers)
    vendor = openslide.OpenSlide.detect_format(os.fspath(path))
    if vendor is None:
        if backend != "auto":
            raise SlideError(path, f"backend={backend!r}: OpenSlide does not recognise this file")
        _not_a_broken_slide(path)
        return ImageSlide(path, workers)
    if backend == "openslide" or vendor not in VENDORS:
        if backend == "tiff":
            raise SlideError(path, f"backend='tiff': vendor {vendor!r} is not a plain tiled TIFF")
        return OpenSlideSlide(path, workers)
    slide = TiffSlide(path, workers)
    if backend == "auto" and not slide.direct_levels:
        slide.close()
        return OpenSlideSlide(path, workers)
    return slide


def _not_a_broken_slide(path: Path) -> None:
    """Raise for a tiled TIFF OpenSlide rejects (a damaged slide): it must not open as a flat image."""
    import openslide
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tiled = tif.pages.first.is_tiled
    except Exception:  # not a TIFF, or not even a readable one: Pillow decides
        return
    if tiled:
        try:
            openslide.OpenSlide(os.fspath(path)).close()
        except openslide.OpenSlideError as e:
            raise SlideError(path, f"a tiled TIFF that OpenSlide cannot read ({e})") from None
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


__all__ = ["ImageSlide", "OpenSlideSlide", "SLIDE_BACKENDS", "Slide", "TiffSlide", "open_slide", "opened"]
