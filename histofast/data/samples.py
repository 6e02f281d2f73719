"""The samples an epoch draws from: every slide's tile grid, scored once (``build_samples``), with the
labels, the batch format and each sample's block.

Why blocks: a tile read on its own decodes every stored tile it touches, four times over at stride
tile/2. A block (about ``BLOCK_PIXELS`` square of grid area) is decoded once for all its samples,
so only the thin overlap between blocks is decoded twice (``histofast.data.plan`` orders the epoch
by blocks; ``histofast.data.lanes`` decodes them)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np

from .. import ops
from ..errors import HistofastError, SmallerThanTileError
from ..specs import BatchFormat, GridSpec
from ..tiling import TileGrid, scan_grid
from .sources import NO_LABEL, SlideSource, class_index

log = logging.getLogger("histofast")

BLOCK_PIXELS = 4096  # grid pixels per block side: overlap (tile − stride + 2·reach) is small against it
MODES = ("tiles", "images")  # a sample: a tile, or an image window cut into its patch grid


@dataclass(frozen=True, eq=False)
class Samples:
    """What one epoch draws from: the slides, their labels and scored grids, and the batch format.

    A sample is a kept grid cell: a tile (``mode="tiles"``) or an image window whose patch grid is
    stacked (``mode="images"``). Sample ``offsets[i] + k`` is the k-th kept cell of slide i (row-major);
    that number is also its augmentation counter, so a sample's draw does not depend on the order.
    """

    slides: list[str]
    labels: np.ndarray  # int64 (slides,), NO_LABEL when unlabelled
    classes: list[str]
    grids: list[TileGrid | None]  # None: the slide failed while being scored
    mode: str
    tile_size: int  # output patch side (tiles: the tile), grid pixels
    stride: int  # images: patch stride inside a window
    batch: BatchFormat  # layout NCHW: samples are (3, T, T), or (P, 3, t, t) for images
    failed: dict[str, str] = field(default_factory=dict)  # slide path -> reason, filled while scoring

    # Derived once (the grids never change): the lanes index these per block and per batch.
    @cached_property
    def counts(self) -> np.ndarray:
        """int64 (slides,) kept samples per slide."""
        return np.array([0 if g is None else len(g) for g in self.grids], np.int64)

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64 (slides + 1,): slide i's samples are numbered ``offsets[i] .. offsets[i + 1] - 1``."""
        return np.concatenate([[0], np.cumsum(self.counts)])

    @cached_property
    def owner(self) -> np.ndarray:
        """int64 (N,) each sample's slide."""
        return np.repeat(np.arange(len(self.grids)), self.counts)

    @cached_property
    def grid_coords(self) -> np.ndarray:
        """int64 (N, 2) each sample's grid-pixel (x, y) in its slide's grid."""
        return _stacked([g.grid_coords for g in self.grids if g is not None])

    @cached_property
    def coords(self) -> np.ndarray:
        """int64 (N, 2) each sample's level-0 (x, y)."""
        return _stacked([g.coords for g in self.grids if g is not None])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        t = self.tile_size
        if self.mode == "tiles":
            return (3, t, t)
        side = self.grids_sample_size
        n = ops.grid_shape(side, side, t, self.stride)
        return (n[0] * n[1], 3, t, t)

    @cached_property
    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Every sample's block, and the samples in block order.

        Returns:
            ``block_of`` int64 (N,) indexed by sample number, and ``order`` int64 (N,): sample numbers
            grouped by block (blocks numbered slide by slide, row-major), row-major within a block."""
        block_of, base = [], 0
        for grid in self.grids:
            if grid is None or len(grid) == 0:
                continue
            per = max(1, (BLOCK_PIXELS - grid.tile_size) // grid.stride + 1)  # cells per block side
            rows, cols = np.nonzero(grid.keep)
            key = (rows // per) * (grid.shape[1] // per + 1) + cols // per
            _, local = np.unique(key, return_inverse=True)
            block_of.append(base + local.reshape(-1))
            base += local.max() + 1
        block_of = np.concatenate(block_of).astype(np.int64)
        assert len(block_of) == self.offsets[-1]
        return block_of, np.argsort(block_of, kind="stable")

    @cached_property
    def grids_sample_size(self) -> int:
        """Side of one sample's cell in the grids (the tile, or the image window)."""
        return next(g.tile_size for g in self.grids if g is not None)


def _stacked(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.empty((0, 2), np.int64)


def build_samples(
    items: Sequence[SlideSource | TileGrid],
    grid: GridSpec,
    batch: BatchFormat,
    *,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    decode: str = "auto",
    progress: bool = True,
) -> Samples:
    """Score every slide's grid once (a slide that fails is logged and left out).

    Tiles (``image_size`` None): the grid is ``grid``. Images: the grid is windows of ``image_size`` at stride
    ``image_size``, each cut into patches of ``grid.tile_size`` at ``grid.stride``. Grids are scored on ``device``,
    decoded as ``decode`` says (see ``tile_grid``)."""
    mode = "tiles" if image_size is None else "images"
    if batch.layout != "NCHW":
        raise HistofastError(f"batch: layout={batch.layout!r}: samples are channels first, pass layout='NCHW'")
    cells = grid
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < grid.tile_size:
            raise HistofastError(f"image_size={image_size!r}: must be an integer ≥ tile_size={grid.tile_size} (pixels)")
        cells = dataclasses.replace(grid, tile_size=int(image_size), stride=int(image_size))
    grids: list[TileGrid | None] = []
    failed: dict[str, str] = {}
    sources = [s for s in items if isinstance(s, SlideSource)]
    given = [g for g in items if isinstance(g, TileGrid)]
    if given and (sources or mode != "tiles"):
        raise HistofastError("source: TileGrids cannot be mixed with paths, and only work without image_size")
    from tqdm.auto import tqdm

    for item in tqdm(items, desc="scoring slides", unit="slide", disable=not progress or len(items) < 2):
        if isinstance(item, TileGrid):
            grids.append(item)
            continue
        try:
            grids.append(scan_grid(item.path, cells, device=device, decode=decode))
        except (HistofastError, OSError) as e:  # a bad slide never stops the others
            if mode == "images" and isinstance(e, SmallerThanTileError):  # the grid's "tile" is the image here
                e = SmallerThanTileError(item.path, e.level, e.size, e.tile_size, "image (image_size={})")
            log.warning("skipping %s: %s", item.path, e)
            failed[item.path] = str(e)
            grids.append(None)
    tile_size = grid.tile_size
    if given:
        slides, labels, names = [g.slide_path for g in given], np.full(len(given), NO_LABEL, np.int64), []
        tile_size = given[0].tile_size
    else:
        slides = [s.path for s in sources]
        names, labels = class_index(sources, classes)
    samples = Samples(slides, labels, names, grids, mode, int(tile_size), grid.stride, batch, failed)
    if samples.counts.sum() == 0:
        why = f"; first: {next(iter(failed.values()))}" if failed else ""
        raise HistofastError(f"no tissue {mode} in {len(items)} slides (max_white={grid.max_white}; "
                             f"{len(failed)} slides failed{why})")
    return samples
