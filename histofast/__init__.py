"""histofast: histopathology slides to GPU-ready training batches, fast.

In the order the data flows: ``histofast.io`` reads slides (``open_slide``); ``histofast.tiling`` finds the
tissue tiles of a level (``tile_grid``, the paper's OpenCV HSV test, exactly) and cuts them in batches
(``iter_tiles``, ``TileGrid.tiles``) with the settings of a ``GridSpec`` and a ``BatchFormat`` (``histofast.specs``);
``histofast.ops`` holds the kernels and ``histofast.Augment`` draws
seeded geometric augmentation; ``histofast.export`` writes tiles and TFRecord shards; ``histofast.data``
feeds training batches through DALI or PyTorch (``Pipeline``, ``TileDataset``, ``split``);
``histofast.models`` and ``histofast.train`` train and evaluate the models; ``histofast.synth`` generates
slides. ``import histofast`` does not import PyTorch: what needs it loads on first use."""
from __future__ import annotations

import importlib
from typing import Any

from . import ops, synth
from ._version import __version__
from .augment import Augment
from .build import build_info, cuda_available
from .data.sources import SlideSource, split
from .errors import HistofastError, SlideError
from .io import Slide, open_slide
from .specs import BatchFormat, GridSpec
from .tiling import TileBatch, TileGrid, iter_tiles, tile_grid

_NEEDS_TORCH = {"Pipeline": "histofast.data.pipeline", "TileDataset": "histofast.data.dataset"}
# Subpackages reached as attributes (``histofast.train.fit``, ``histofast.evaluate.evaluate``) load on first use.
_LAZY_MODULES = {
    "cli": "histofast.cli", "data": "histofast.data", "export": "histofast.export", "models": "histofast.models",
    "train": "histofast.train", "evaluate": "histofast.train.evaluate", "utils": "histofast.utils",
    "benchmark": "histofast.benchmark",
}


def __getattr__(name: str) -> Any:
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
    raise AttributeError(f"module 'histofast' has no attribute {name!r}")


__all__ = [
    "Augment", "BatchFormat", "GridSpec", "HistofastError", "Pipeline", "Slide", "SlideError", "SlideSource",
    "TileBatch", "TileDataset", "TileGrid", "build_info", "cuda_available", "iter_tiles", "open_slide", "ops", "split",
    "synth", "tile_grid", "__version__",
]
