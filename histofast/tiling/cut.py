"""Cutting the kept tiles of a scored grid out of the bands of a level, augmented, in batches.

``cut`` is the one loop behind ``iter_tiles`` and ``TileGrid.tiles``: for each band it runs ``score``
(a no-op for a grid already scored), then ``ops.augment`` on the band's kept tiles."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from .. import ops
from ..checks import check_count
from ..io.bands import Band, Rows, read_bands
from ..io.level import LevelView
from ..renamed import renamed_attribute
from ..specs import BatchFormat
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
        coords: int64 (n, 2) level-0 (x, y); grid_coords: int64 (n, 2) grid-pixel (x, y) (0.x: ``level_coords``).
        white_ratio: float32 (n,).
        index: int64 (n,) ordinal of each tile among the kept tiles (its augmentation counter).
    """

    images: Any
    coords: np.ndarray
    grid_coords: np.ndarray
    white_ratio: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def level_coords(self) -> np.ndarray:
        """Deprecated name of ``grid_coords``."""
        return renamed_attribute(self, "level_coords", "grid_coords")


TILE_FORMAT = {"augment": None, "out_dtype": "uint8", "layout": "NHWC"}  # iter_tiles' defaults: the plain tiles


def tile_format(options: dict[str, Any]) -> tuple[BatchFormat, int]:
    """The ``BatchFormat`` and epoch of ``iter_tiles``' (and ``TileGrid.tiles``') keywords: ``epoch`` and
    ``BatchFormat``'s, with ``TILE_FORMAT`` as defaults; another keyword raises ``TypeError`` naming it."""
    options = dict(options)
    epoch = check_count(options.pop("epoch", 0), "epoch", 0)
    unknown = set(options) - {f.name for f in dataclasses.fields(BatchFormat)}
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))} (the batch format takes "
                        f"{', '.join(f.name for f in dataclasses.fields(BatchFormat))}, and epoch)")
    return BatchFormat(**{**TILE_FORMAT, **options}).resolved(None), epoch


def cut(
    view: LevelView,
    grid: ScoredGrid,
    score: Callable[[Band], None],
    batch_format: BatchFormat,
    epoch: int = 0,
    *,
    device: str = "cpu",
    rows: Rows | None = None,
) -> Iterator[TileBatch]:
    """Cut the kept tiles of ``grid`` band by band into batches of ``batch_format`` (``epoch``: the augmentation
    draw); ``score(band)`` fills the band's rows of the grid's white ratio first (a no-op when the grid is
    already scored). ``rows`` decodes the view (default: the slide's own decoders); ``device`` and the format's
    augmentation are resolved."""
    f, augment = batch_format, batch_format.augment
    t, stride = grid.tile_size, grid.stride
    reach = augment.reach(t) if augment is not None else 0
    height = view.dimensions[1]
    shape = (f.batch_size, 3, t, t) if f.layout == "NCHW" else (f.batch_size, t, t, 3)
    buffers = BatchBuffers(shape, f.out_dtype, device)
    batch, filled, done = None, 0, 0
    parts: list[tuple[np.ndarray, ...]] = []

    for band in read_bands(view, t, stride, reach, rows=rows):
        score(band)
        keep = grid.keep[band.rows.start : band.rows.stop]
        tile_rows, tile_cols = np.nonzero(keep)
        if len(tile_rows) == 0:
            continue
        tile_rows += band.rows.start
        # The band rows this band's tiles can read; reflection only happens at the view's borders.
        top = max(0, band.rows.start * stride - reach)
        bottom = min(height, (band.rows.stop - 1) * stride + t + reach)
        region = to_device(band.pixels[top - band.y0 : bottom - band.y0], device)
        origins = np.stack([tile_cols * stride, tile_rows * stride - top], 1).astype(np.int64)
        ratio = grid.white_ratio[tile_rows, tile_cols]
        grid_xy = np.stack([tile_cols, tile_rows], 1).astype(np.int64) * stride
        k = 0
        while k < len(tile_rows):
            if batch is None:
                batch, filled, parts = buffers.take(), 0, []
            n = min(f.batch_size - filled, len(tile_rows) - k)
            params = augment.draw(n, epoch=epoch, start=done) if augment is not None else {}
            ops.augment(region, origins[k : k + n], t, **params, mean=f.mean, std=f.std, out_dtype=f.out_dtype,
                        layout=f.layout, out=batch[filled : filled + n], threads=view.slide.threads)
            parts.append((grid_xy[k : k + n], ratio[k : k + n], np.arange(done, done + n)))
            filled, done, k = filled + n, done + n, k + n
            if filled == f.batch_size:
                yield _batch(batch, parts, grid.downsample)
                batch = None
    if batch is not None:
        yield _batch(batch[:filled], parts, grid.downsample)


def _batch(images: Any, parts: list, downsample: float) -> TileBatch:
    grid_xy, ratio, index = (np.concatenate(p) for p in zip(*parts))
    return TileBatch(images, np.floor(grid_xy * downsample + 0.5).astype(np.int64), grid_xy, ratio, index)
