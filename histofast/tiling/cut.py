"""Cutting the kept tiles of a scored grid out of the bands of a level, augmented, in batches.

``cut`` is the one loop behind ``iter_tiles`` and ``TileGrid.tiles``: for each band it runs ``score``
(a no-op for a grid already scored), then ``ops.augment`` on the band's kept tiles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .. import ops
from ..augment import Augment
from ..checks import check_count, check_device
from ..io.bands import Band, Rows, read_bands
from ..io.level import LevelView
from .buffers import BatchBuffers, to_device


class ScoredGrid(Protocol):
    """What ``cut`` reads of a grid (a ``TileGrid``): its geometry and, band by band, its decisions."""

    tile_size: int
    stride: int
    downsample: float
    white_ratio: np.ndarray  # float32 (rows, cols), filled by ``score`` as bands arrive

    @property
    def keep(self) -> np.ndarray: ...


@dataclass(frozen=True)
class TileBatch:
    """A batch of kept tiles.

    Attributes:
        images: the tiles as ``ops.augment`` lays them out ((n, T, T, 3) uint8 by default), numpy on
            the CPU or a torch tensor on a CUDA device.
        coords: int64 (n, 2) level-0 (x, y); level_coords: int64 (n, 2) grid-pixel (x, y).
        white_ratio: float32 (n,).
        index: int64 (n,) ordinal of each tile among the kept tiles (its augmentation counter).
    """

    images: Any
    coords: np.ndarray
    level_coords: np.ndarray
    white_ratio: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def check_cut_options(
    batch_size: int = 64, augment: Augment | None = None, epoch: int = 0, out_dtype: str = "uint8",
    layout: str = "NHWC", mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
    device: str = "cpu",
) -> None:
    """Raise for a bad ``cut`` option (keyword names as ``iter_tiles`` takes them)."""
    check_count(batch_size, "batch_size")
    if augment is not None and not isinstance(augment, Augment):
        raise TypeError(f"augment: expected a histofast.Augment or None, got {type(augment).__name__}")
    check_count(epoch, "epoch", 0)
    ops.check_batch_format(out_dtype, layout, mean, std)
    check_device(device)


def cut(
    view: LevelView,
    grid: ScoredGrid,
    score: Callable[[Band], None],
    *,
    batch_size: int = 64,
    augment: Augment | None = None,
    epoch: int = 0,
    out_dtype: str = "uint8",
    layout: str = "NHWC",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    device: str = "cpu",
    rows: Rows | None = None,
) -> Iterator[TileBatch]:
    """Cut the kept tiles of ``grid`` band by band; ``score(band)`` fills the band's rows of the grid's
    white ratio first (a no-op when the grid is already scored). ``rows`` decodes the view (default: the
    slide's own decoders)."""
    check_cut_options(batch_size, augment, epoch, out_dtype, layout, mean, std, device)
    t, stride = grid.tile_size, grid.stride
    reach = augment.reach(t) if augment is not None else 0
    height = view.dimensions[1]
    shape = (batch_size, 3, t, t) if layout == "NCHW" else (batch_size, t, t, 3)
    buffers = BatchBuffers(shape, out_dtype, device)
    batch, filled, done = None, 0, 0
    parts: list[tuple[np.ndarray, ...]] = []

    for band in read_bands(view, t, stride, reach, rows=rows):
        score(band)
        keep = grid.keep[band.rows.start : band.rows.stop]
        rows, cols = np.nonzero(keep)
        if len(rows) == 0:
            continue
        rows += band.rows.start
        # The band rows this band's tiles can read; reflection only happens at the view's borders.
        top = max(0, band.rows.start * stride - reach)
        bottom = min(height, (band.rows.stop - 1) * stride + t + reach)
        region = to_device(band.pixels[top - band.y0 : bottom - band.y0], device)
        origins = np.stack([cols * stride, rows * stride - top], 1).astype(np.int64)
        ratio = grid.white_ratio[rows, cols]
        level_xy = np.stack([cols, rows], 1).astype(np.int64) * stride
        k = 0
        while k < len(rows):
            if batch is None:
                batch, filled, parts = buffers.take(), 0, []
            n = min(batch_size - filled, len(rows) - k)
            params = augment.draw(n, epoch=epoch, start=done) if augment is not None else {}
            ops.augment(region, origins[k : k + n], t, **params, mean=mean, std=std, out_dtype=out_dtype,
                        layout=layout, out=batch[filled : filled + n], threads=view.slide.workers)
            parts.append((level_xy[k : k + n], ratio[k : k + n], np.arange(done, done + n)))
            filled, done, k = filled + n, done + n, k + n
            if filled == batch_size:
                yield _batch(batch, parts, grid.downsample)
                batch = None
    if batch is not None:
        yield _batch(batch[:filled], parts, grid.downsample)


def _batch(images: Any, parts: list, downsample: float) -> TileBatch:
    level_xy, ratio, index = (np.concatenate(p) for p in zip(*parts))
    return TileBatch(images, np.floor(level_xy * downsample + 0.5).astype(np.int64), level_xy, ratio, index)
