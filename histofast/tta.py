"""Test-time augmentation: the 8 dihedral views (rot90 × flip) of tiles, or of whole images given as
their patch grids, whose predictions ``evaluate --tta 8`` averages."""
from __future__ import annotations

import math

import torch

from .errors import HistofastError

TTA = (1, 8)


def dihedral(images: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """One of the 8 dihedral views: ``k`` quarter turns, then a left-right flip.

    [N, 3, H, W] tiles turn as images; [N, P, 3, t, t] patch grids (P = n², row-major) turn as the whole
    image they cut: the grid's positions and every patch turn together."""
    if images.ndim == 4:
        out = torch.rot90(images, k, (2, 3))
        return out.flip(3) if flip else out
    n = math.isqrt(images.shape[1])
    if n * n != images.shape[1]:
        raise HistofastError(f"images: {images.shape[1]} patches per image is not a square grid")
    grid = images.reshape(len(images), n, n, *images.shape[2:])
    grid = torch.rot90(torch.rot90(grid, k, (1, 2)), k, (4, 5))
    if flip:
        grid = grid.flip(2).flip(5)
    return grid.reshape(images.shape)


def dihedral_views(images: torch.Tensor, tta: int) -> list[torch.Tensor]:
    """``tta`` 1: [images]; 8: the 8 dihedral views (rot90 × flip), as the two-level seed's test vote."""
    if tta not in TTA:
        raise HistofastError(f"tta={tta!r}: expected 1 or 8")
    return [images] if tta == 1 else [dihedral(images, k, f) for f in (False, True) for k in range(4)]
