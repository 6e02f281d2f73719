"""Tiling: which tiles of a slide level are tissue, and their pixels in batches.

``tile_grid`` scores every tile of a grid (``TileGrid``); ``iter_tiles`` scores and cuts in one pass;
``TileGrid.tiles`` cuts a saved grid's tiles again. Nothing here needs PyTorch (only ``device="cuda"`` does)."""
from __future__ import annotations

from .cut import TileBatch
from .grid import CSV_FIELDS, TileGrid, check_grid_args
from .scan import TileIterator, iter_tiles, tile_grid

__all__ = ["CSV_FIELDS", "TileBatch", "TileGrid", "TileIterator", "check_grid_args", "iter_tiles", "tile_grid"]
