"""Plain images (PNG, JPEG, non-pyramidal TIFF, …) as one-level slides, such as the 2560×2560
region images of the two-level CNN; decoded once with Pillow and held in memory."""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SlideError
from ..renamed import renamed_keyword
from ..utils.noise import explained
from .slide import Job, OnPart, Slide, composite_on_white

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

log = logging.getLogger("histofast")


class ImageSlide(Slide):
    """A plain image file as a slide with one level and no mpp (``mpp=`` requests need a slide)."""

    backend = "image"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, **deprecated: Any) -> None:
        from PIL import Image

        threads = renamed_keyword(deprecated, "ImageSlide", "workers", "threads", threads)
        if deprecated:
            raise TypeError(f"ImageSlide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        with explained(path, "Pillow", python_warnings=True):  # a damaged TIFF's tags: "Corrupt EXIF data"
            im = _opened(path)
        with im:
            fmt = im.format or "image"
            w, h = im.size
            if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
                log.info("%s: a plain %s image of %d×%d pixels is decoded whole into memory (%.1f GB); "
                         "tiled whole-slide formats are read in bands instead", path, fmt, w, h, w * h * 3 / 1e9)
            # Pillow decodes compressed TIFFs through libtiff, which prints its errors on file descriptor 2
            # ("JPEGLib: Bogus marker length."): captured for TIFFs only, as a capture is one at a time.
            quiet = explained(path, "Pillow", stderr=True, python_warnings=True) if fmt == "TIFF" else nullcontext()
            with quiet:
                self._pixels = _decoded(im, path)
        h, w = self._pixels.shape[:2]
        super().__init__(path, [(w, h)], [1.0], {"openslide.vendor": "", "histofast.format": fmt}, threads)

    def _jobs(self, level: int, x: int, y: int, w: int, h: int, out: np.ndarray,
              on_part: OnPart | None = None, scale: int = 1) -> list[Job]:  # scale: 1 (no dct_scales here)
        def job() -> None:
            out[...] = self._pixels[y : y + h, x : x + w]
            if on_part is not None:
                on_part(out, x, y)

        return [job]


def _opened(path: str | os.PathLike) -> PILImage:
    """The image file opened by Pillow (its header read); ``SlideError`` if Pillow cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        # Pillow warns of images over its MAX_IMAGE_PIXELS (a decompression-bomb guard) and refuses those
        # over twice it; in between, the image is read, and histofast says what it costs instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise SlideError(path, f"not a slide or image that OpenSlide or Pillow can read ({e})") from None
    except OSError as e:  # Pillow's truncated/corrupt data
        raise SlideError(path, f"corrupt image: {e}") from None


def _decoded(im: PILImage, path: str | os.PathLike) -> np.ndarray:
    """The pixels as uint8 RGB, transparent ones on white (as OpenSlide's); ``SlideError`` for corrupt data."""
    try:
        if im.has_transparency_data:  # transparent pixels read white, as OpenSlide's do
            rgba = np.asarray(im.convert("RGBA"))
            pixels = np.empty(rgba.shape[:2] + (3,), np.uint8)
            composite_on_white(rgba, pixels)
            return pixels
        # no convert() copy when the image is RGB already: peak memory 2×, not 3×, the pixels
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except OSError as e:  # Pillow's truncated/corrupt data
        raise SlideError(path, f"corrupt image: {e}") from None
