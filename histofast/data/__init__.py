"""Training data: slide sources and patient-disjoint splits (``sources``), the sample engine (``samples``,
``plan``, ``lanes``), ``TileDataset`` (a PyTorch ``IterableDataset``), ``Pipeline`` (DALI or PyTorch) and
``TFRecordPipeline`` (exported shards through DALI).

Importing this package does not import PyTorch: the classes that need it load on first use."""
from __future__ import annotations

from typing import Any

from .sources import SlideSource, class_folders, read_manifest, resolve, split, write_manifest

_NEEDS_TORCH = {"Pipeline": "pipeline", "TileDataset": "dataset", "TFRecordPipeline": "tfrecord_pipeline"}


def __getattr__(name: str) -> Any:
    if name in _NEEDS_TORCH:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_NEEDS_TORCH[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Pipeline", "SlideSource", "TFRecordPipeline", "TileDataset", "class_folders", "read_manifest", "resolve",
           "split", "write_manifest"]
