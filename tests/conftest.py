"""Session-scoped synthetic slides and their OpenSlide reference pixels, shared by the tests
(the GPU skip lives in the root conftest.py, shared with the benchmarks)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def make_slide(tmp_path_factory):
    """``make_slide(width, height, seed, tissue_fraction, **write_slide_options) -> Path``: a synthetic
    Aperio SVS written once per distinct argument set for the whole session."""
    from histofast import synth

    root = tmp_path_factory.mktemp("slides")
    cache: dict[tuple, Path] = {}

    def make(width: int, height: int, seed: int = 0, tissue_fraction: float = 0.5, **options) -> Path:
        key = (width, height, seed, tissue_fraction, tuple(sorted(options.items())))
        if key not in cache:
            name = f"{width}x{height}_s{seed}_t{tissue_fraction:g}_{len(cache)}.svs"
            cache[key] = synth.write_slide(root / name, width, height, seed, tissue_fraction, **options)
        return cache[key]

    return make


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's RGBA (straight alpha) over white, uint8 RGB; written independently of histofast's."""
    rgba = np.asarray(rgba)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    return np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)


@pytest.fixture(scope="session")
def openslide_level():
    """``openslide_level(path, level) -> uint8 (h, w, 3)``: the whole level read by OpenSlide from the level
    origin (the one read whose level-0 → level mapping is exact at any downsample), on white; cached."""
    import openslide

    cache: dict[tuple[str, int], np.ndarray] = {}

    def read(path, level: int) -> np.ndarray:
        key = (os.fspath(path), level)
        if key not in cache:
            if len(cache) >= 24:
                cache.pop(next(iter(cache)))
            with openslide.OpenSlide(os.fspath(path)) as osr:
                pixels = _on_white(osr.read_region((0, 0), level, osr.level_dimensions[level]))
            pixels.setflags(write=False)
            cache[key] = pixels
        return cache[key]

    return read
