"""Test-time augmentation: the 8 dihedral views (rot90 × flip) of tiles, or of whole images given as
their patch grids, whose predictions ``evaluate --tta 8`` averages."""
from __future__ import annotations

import math

import torch

from ..errors import HistofastError

TTA = (1, 8)
VIEWS = [(k, flip) for flip in (False, True) for k in range(4)]  # (quarter turns, flip) of dihedral_views' order


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
    return [images] if tta == 1 else [dihedral(images, k, f) for k, f in VIEWS]


def mean_over_views(probabilities: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Mean of per-patch (or per-tile) probabilities over the views of ``dihedral_views(images, len(...))``.

    A view of a patch grid moves the patches; each view's rows are put back in the original patch order first.
    probabilities: one (N·P, C) (or (N, C) for tiles) tensor per view. Returns the same shape."""
    if images.ndim == 4 or len(probabilities) == 1:
        return torch.stack(probabilities).mean(0)
    n, p = len(images), images.shape[1]
    index = torch.arange(p, device=images.device).view(1, p, 1, 1, 1)
    total = torch.zeros_like(probabilities[0]).view(n, p, -1)
    for (k, flip), probs in zip(VIEWS, probabilities):
        order = dihedral(index, k, flip).flatten()  # view patch j shows original patch order[j]
        total[:, order] += probs.view(n, p, -1)
    return (total / len(probabilities)).view(-1, total.shape[-1])
