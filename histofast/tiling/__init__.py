"""Tiling: which tiles of a slide level are tissue, and their pixels in batches.

``tile_grid`` scores every tile of a grid (``TileGrid``); ``iter_tiles`` scores and cuts in one pass;
``TileGrid.tiles`` cuts a saved grid's tiles again; ``scan_grid`` and ``scan_tiles`` do the first two for a
``GridSpec`` (and ``BatchFormat``), as the layers above call them. Nothing here needs PyTorch (only
``device="cuda"`` does)."""
from __future__ import annotations

from .cut import TileBatch
from .grid import CSV_FIELDS, TileGrid
from .scan import TileIterator, iter_tiles, scan_grid, scan_tiles, tile_grid

__all__ = ["CSV_FIELDS", "TileBatch", "TileGrid", "TileIterator", "iter_tiles", "scan_grid", "scan_tiles", "tile_grid"]
