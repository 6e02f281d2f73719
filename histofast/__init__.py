"""histofast: histopathology slides to GPU-ready training batches, fast.

``histofast.ops`` holds the kernels (OpenCV-exact HSV, per-tile white ratio, geometric augment);
``histofast.Augment`` draws seeded per-tile augmentation parameters and applies them."""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops, synth
from .augment import Augment
from .build import build_info, cuda_available
from .errors import HistofastError

__all__ = ["Augment", "HistofastError", "build_info", "cuda_available", "ops", "synth", "__version__"]
