"""histofast: histopathology slides to GPU-ready training batches, fast.

``histofast.open_slide`` reads slides; ``histofast.tile_grid`` finds the tissue tiles of a level
(the paper's OpenCV HSV test, exactly) and ``iter_tiles``/``TileGrid.tiles`` cut them in batches;
``histofast.ops`` holds the kernels; ``histofast.Augment`` draws seeded geometric augmentation;
``histofast.Pipeline`` (or ``TileDataset``) feeds training batches through DALI or PyTorch."""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops, synth
from .augment import Augment
from .build import build_info, cuda_available
from .errors import HistofastError, SlideError
from .grid import TileBatch, TileGrid, iter_tiles, tile_grid
from .io import Slide, open_slide
from .sources import SlideSource, split

_NEEDS_TORCH = ("Pipeline", "TileDataset")


def __getattr__(name: str):  # Pipeline needs PyTorch: import it on first use, not with histofast
    if name in _NEEDS_TORCH:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'histofast' has no attribute {name!r}")


__all__ = [
    "Augment", "HistofastError", "Pipeline", "Slide", "SlideError", "SlideSource", "TileBatch", "TileDataset",
    "TileGrid", "build_info", "cuda_available", "iter_tiles", "open_slide", "ops", "split", "synth", "tile_grid",
    "__version__",
]
