"""Synthetic H&E-like images for demos, tests and benchmarks (nothing is ever downloaded).

Tissue blobs of pink stroma with purple nuclei on a white background, vectorised numpy."""
from __future__ import annotations

import numpy as np

from .errors import HistofastError


def _smooth_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Bilinear upsampling of a coarse random grid: a smooth field in [0, 1), float32 (height, width)."""
    gy, gx = height // cell + 2, width // cell + 2
    coarse = rng.random((gy, gx), dtype=np.float32)
    y = np.arange(height, dtype=np.float32) / cell
    x = np.arange(width, dtype=np.float32) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    wy, wx = (y - y0)[:, None], (x - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - wx) + coarse[y0][:, x0 + 1] * wx
    bottom = coarse[y0 + 1][:, x0] * (1 - wx) + coarse[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def tissue_image(height: int, width: int, seed: int = 0, tissue_fraction: float = 0.5) -> np.ndarray:
    """An H&E-like RGB image.

    Args:
        height, width: pixels.
        seed: the same seed gives the same image.
        tissue_fraction: about this share of the area is tissue, the rest white background.
    Returns:
        uint8 (height, width, 3) RGB.
    """
    if height < 1 or width < 1:
        raise HistofastError(f"height={height}, width={width}: must be positive")
    if not 0 <= tissue_fraction <= 1:
        raise HistofastError(f"tissue_fraction={tissue_fraction}: must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    blobs = _smooth_field(rng, height, width, max(16, min(height, width) // 6))
    tissue = blobs < np.quantile(blobs, tissue_fraction) if tissue_fraction > 0 else np.zeros_like(blobs, bool)
    nuclei = _smooth_field(rng, height, width, 6) > 0.72
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    background = np.array([242, 240, 244], np.float32)
    stroma = np.array([228, 150, 190], np.float32)
    nucleus = np.array([95, 60, 150], np.float32)
    colour = np.where(tissue[..., None], np.where(nuclei[..., None], nucleus, stroma), background)
    return np.clip(colour + noise, 0, 255).astype(np.uint8)
