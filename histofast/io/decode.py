"""Which decoder reads a view's rows: the slide's own on the CPU, or nvImageCodec (on the GPU, or its
CPU backend), chosen by ``decode=`` and where the pixels go (``device=``)."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ..errors import HistofastError, SlideError
from .bands import Pending, Rows, SlideRows
from .level import LevelView
from .nvimgcodec import INSTALL, NvDecoder, NvRows, check_level, level_ifd, nvimgcodec_installed

log = logging.getLogger("histofast")

# "auto": nvImageCodec on the GPU when device is CUDA and it reads the level, else the CPU decoders;
# "cpu": the CPU decoders (the tiled-TIFF fast path, OpenSlide, Pillow); "gpu": nvImageCodec on the GPU
# or an error; "nvimgcodec-cpu": nvImageCodec's CPU backend (the GPU path's code, testable without a GPU).
DECODES = ("auto", "cpu", "gpu", "nvimgcodec-cpu")
_warned: set[str] = set()


def check_decode(decode: object, device: str) -> str:
    """``decode`` checked against ``device`` (already checked); raises ``HistofastError`` naming it."""
    if decode not in DECODES:
        raise HistofastError(f"decode={decode!r}: expected one of {', '.join(map(repr, DECODES))}")
    if decode == "gpu" and device == "cpu":
        raise HistofastError("decode='gpu' decodes into GPU memory: it needs device='cuda' (or use decode='cpu')")
    if decode in ("gpu", "nvimgcodec-cpu") and not nvimgcodec_installed():
        raise HistofastError(f"decode={decode!r}: nvImageCodec is not installed ({INSTALL})")
    return str(decode)


def open_rows(view: LevelView, decode: str = "auto", device: str = "cpu", decoder: NvDecoder | None = None) -> Rows:
    """The source that decodes ``view``'s rows for ``decode`` and ``device`` (see ``DECODES``); its
    ``name`` says which decoder runs. Close it when done. ``decoder``: an nvImageCodec decoder to use
    (the caller keeps it; default: a new one, closed with the source).

    Raises:
        HistofastError / SlideError: ``decode`` is "gpu" or "nvimgcodec-cpu" and cannot be had for this view
            (nvImageCodec missing, a resampled view, a level it does not read, pixels that do not match).
    """
    decode = check_decode(decode, device)
    if decode == "cpu" or (decode == "auto" and device == "cpu"):
        return SlideRows(view, device=device)
    slide = view.slide
    offset, why = level_ifd(slide, view.level)
    if view.scale != 1.0:
        why = f"the grid resamples level {view.level} (scale {view.scale:.4g}), which runs on the CPU"
    if decode == "auto" and not nvimgcodec_installed():
        _note(f"decoding on the CPU: nvImageCodec is not installed ({INSTALL})", once=True)
        return SlideRows(view, device=device)
    if why:
        if decode == "auto":
            _note(f"{slide.path.name}: decoding on the CPU: {why}")
            return SlideRows(view, device=device)
        raise SlideError(slide.path, f"decode={decode!r}: {why}")
    owned = decoder is None
    try:
        if decoder is None:
            decoder = NvDecoder("cpu" if decode == "nvimgcodec-cpu" else device, slide.threads)
        check_level(decoder, slide, view.level, offset)
    except (HistofastError, SlideError) as e:
        if owned and decoder is not None:
            decoder.close()
        if decode == "auto":
            _note(f"decoding on the CPU: {e}", once=True)
            return SlideRows(view, device=device)
        raise
    return NvRows(decoder, slide, view.level, offset, owned)


def _note(message: str, once: bool = False) -> None:
    """An automatic fall-back to the CPU: a warning the first time (per process), then debug lines."""
    if once and message in _warned:
        return
    _warned.add(message)
    (log.warning if once else log.info)(message)


class RegionReader:
    """Level regions for the Pipeline's lanes, decoded as ``decode`` and ``device`` ask (see ``DECODES``):
    through nvImageCodec (one decoder, created on first use) where it reads the view, else the slide's
    own decoders in ``pool``. Whether nvImageCodec reads a slide's level is settled once per level."""

    def __init__(self, decode: str, device: str, threads: int) -> None:
        self.decode, self.device, self.threads = check_decode(decode, device), device, threads
        self._decoder: NvDecoder | None = None
        self._levels: dict[tuple[str, int], int] = {}  # (path, level) → IFD offset, 0: the CPU decoders

    def read(self, view: LevelView, x: int, y: int, w: int, h: int, pool: Any) -> tuple[Any, Pending]:
        """Start decoding the view region at (x, y) of (w, h) view pixels: (its buffer, the decodes). Decoded on
        the CPU for a CUDA device, the buffer is a pinned torch tensor (its copy to the device then overlaps)."""
        offset = self._offset(view)
        if not offset:
            if self.device == "cpu":
                pixels = host = np.empty((h, w, 3), np.uint8)
            else:
                import torch

                pixels = torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=True)  # a new one: nobody reads it
                host = pixels.numpy()
            return pixels, Pending([pool.submit(job) for job in view.jobs(x, y, w, h, host)])
        pixels = self._decoder.empty((h, w, 3))
        return pixels, self._decoder.decode_into(os.fspath(view.slide.path), offset, [(x, y, w, h)], [pixels],
                                                 f"level {view.level} region x={x} y={y} {w}×{h}")

    def _offset(self, view: LevelView) -> int:
        key = (os.fspath(view.slide.path), view.level)
        if key not in self._levels:
            self._levels[key] = self._settle(view)
        return self._levels[key]

    def _settle(self, view: LevelView) -> int:
        if self.decode == "cpu" or (self.decode == "auto" and self.device == "cpu"):
            return 0
        rows = open_rows(view, self.decode, self.device, self._decoder)  # raises where decode= cannot be had
        if isinstance(rows, NvRows):
            self._decoder = rows.decoder
            return rows.offset
        return 0

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
