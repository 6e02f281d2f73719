"""Plain images (PNG, JPEG, non-pyramidal TIFF, …) as one-level slides, such as the 2560×2560
region images of the two-level CNN; decoded once with Pillow and held in memory."""
from __future__ import annotations

import os

import numpy as np

from ..errors import SlideError
from .slide import Job, Slide, composite_on_white


class ImageSlide(Slide):
    """A plain image file as a slide with one level and no mpp (``mpp=`` requests need a slide)."""

    backend = "image"

    def __init__(self, path: str | os.PathLike, workers: int | None = None) -> None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                fmt = im.format or "image"
                if im.has_transparency_data:  # transparent pixels read white, as OpenSlide's do
                    rgba = np.asarray(im.convert("RGBA"))
                    self._pixels = np.empty(rgba.shape[:2] + (3,), np.uint8)
                    composite_on_white(rgba, self._pixels)
                else:
                    self._pixels = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise SlideError(path, f"not a slide or image that OpenSlide or Pillow can read ({e})") from None
        except OSError as e:  # Pillow's truncated/corrupt data
            raise SlideError(path, f"corrupt image: {e}") from None
        h, w = self._pixels.shape[:2]
        super().__init__(path, [(w, h)], [1.0], {"openslide.vendor": "", "histofast.format": fmt}, workers)

    def _jobs(self, level: int, x: int, y: int, w: int, h: int, out: np.ndarray) -> list[Job]:
        def job() -> None:
            out[...] = self._pixels[y : y + h, x : x + w]

        return [job]
