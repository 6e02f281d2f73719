"""Augment: seeded per-tile geometric augmentation parameters (rot90, flip, shift, angle).

Parameters are counter-based (numpy's Philox): tile j of an epoch gets the same draw whether it
comes in a batch of 1 or 1000, on any backend, so CPU and GPU pipelines see identical batches."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ops
from .checks import check_count
from .errors import HistofastError

MAX_SHIFT = 2**31 - 1  # pixels: shifted origins stay far inside int64


@dataclass(frozen=True)
class Augment:
    """Random geometric augmentation: never colour jitter, never deformation.

    Args:
        rot90: draw quarter turns 0..3 uniformly.
        flip: draw left-right flips with probability 1/2 (with rot90 this covers all 8 dihedral views).
        max_shift: draw integer (dx, dy) shifts uniformly in [-max_shift, max_shift] level pixels.
        max_angle: draw angles uniformly in [-max_angle, max_angle] degrees (bilinear); 0: none.
        seed: the same seed gives the same parameters everywhere.
    """

    rot90: bool = True
    flip: bool = True
    max_shift: int = 0
    max_angle: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if check_count(self.max_shift, "max_shift", 0, unit="pixels") > MAX_SHIFT:
            raise HistofastError(f"max_shift={self.max_shift!r}: must be at most {MAX_SHIFT} pixels")
        angle = self.max_angle
        if (isinstance(angle, bool) or not isinstance(angle, numbers.Real) or not math.isfinite(angle)
                or not 0 <= angle <= 180):
            raise HistofastError(f"max_angle={angle!r}: must be a number of degrees in [0, 180]")
        check_count(self.seed, "seed", 0)

    @classmethod
    def parse(cls, spec: str | None, seed: int = 0) -> Augment | None:
        """``"rot90,flip,shift=16,angle=10"`` (the ``--augment`` syntax) → an ``Augment``; None or "" → None."""
        if not spec:
            return None
        kwargs: dict[str, Any] = {"rot90": False, "flip": False, "seed": seed}
        for part in spec.split(","):
            name, _, value = part.strip().partition("=")
            try:
                if name in ("rot90", "flip") and not value:
                    kwargs[name] = True
                elif name == "shift":
                    kwargs["max_shift"] = int(value)
                elif name == "angle":
                    kwargs["max_angle"] = float(value)
                else:
                    raise ValueError
            except ValueError:
                raise HistofastError(f"augment={spec!r}: {part!r} is not rot90, flip, shift=PIXELS or "
                                     "angle=DEGREES") from None
        return cls(**kwargs)

    def reach(self, tile_size: int) -> int:
        """Pixels beyond a tile's window (each side) that its transformed tile can read.

        Shifts move the window by up to ``max_shift``; a rotation about the window's centre reaches
        its corners, ``tile_size·(√2 − 1)/2`` further out, plus one pixel for bilinear weights."""
        turn = math.ceil(tile_size * (math.sqrt(2) - 1) / 2) + 1 if self.max_angle > 0 else 0
        return int(self.max_shift) + turn

    def draw(self, n: int, epoch: int = 0, start: int = 0) -> dict[str, np.ndarray]:
        """Parameters for tiles ``start .. start + n - 1`` of ``epoch``.

        Returns:
            dict with ``rot90`` int64 (n,), ``flip`` bool (n,), ``shift`` int64 (n, 2) as (dx, dy)
            level pixels, ``angle`` float64 (n,) degrees — the keyword arguments of ``ops.augment``.
        """
        if n < 0 or start < 0:
            raise HistofastError(f"n={n}, start={start}: must be non-negative")
        return self.draw_at(np.arange(start, start + n, dtype=np.int64), epoch)

    def draw_at(self, index: Any, epoch: int = 0) -> dict[str, np.ndarray]:
        """Parameters for the tiles numbered ``index`` (int64 (n,), any order) of ``epoch``, as ``draw``."""
        index = np.asarray(index, np.int64).reshape(-1)
        if epoch < 0 or (index < 0).any():
            raise HistofastError(f"epoch={epoch}, index: must be non-negative")
        key = np.random.SeedSequence([self.seed, epoch]).generate_state(2, np.uint64)
        # Philox yields 4 words per counter step: one step per tile keeps tiles independent of batching.
        # One generator per run of consecutive indices (a whole batch, usually).
        runs = np.flatnonzero(np.diff(index) != 1) + 1
        bits = np.concatenate(
            [np.random.Philox(key=key, counter=int(run[0])).random_raw(4 * len(run)).reshape(-1, 4)
             for run in np.split(index, runs) if len(run)] or [np.empty((0, 4), np.uint64)])
        n = len(index)
        span = np.uint64(2 * self.max_shift + 1)
        uniform = (bits[:, 0] >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return {
            "rot90": (bits[:, 0] & np.uint64(3)).astype(np.int64) if self.rot90 else np.zeros(n, np.int64),
            "flip": (bits[:, 1] & np.uint64(1)).astype(bool) if self.flip else np.zeros(n, bool),
            "shift": (bits[:, 2:] % span).astype(np.int64) - self.max_shift,
            "angle": (2.0 * uniform - 1.0) * self.max_angle,
        }

    def apply(self, region: Any, origins: Any, tile_size: int, *, epoch: int = 0, start: int = 0,
              **options: Any) -> Any:
        """Draw parameters for ``len(origins)`` tiles (numbered from ``start``) and run ``ops.augment``.

        Shapes and units as ``histofast.ops.augment``, whose output keywords ``options`` are (``mean``, ``std``,
        ``out_dtype``, ``layout``, ``out``, ``threads``; by default float32 NCHW in [0, 1]); returns the batch on the
        region's device."""
        params = self.draw(len(origins), epoch=epoch, start=start)
        return ops.augment(region, origins, tile_size, **params, **options)
