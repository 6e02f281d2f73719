"""What the Pipeline kinds share (``TileDataset``, ``Pipeline``, ``TFRecordPipeline``): the batch keys, the
backends, the default augmentation and lane count. One private module, so none imports another's privates."""
from __future__ import annotations

import os

from ..augment import Augment

PIPELINE_BACKENDS = ("auto", "dali", "torch")
DALI_INSTALL = "pip install histofast[dali]"
# Every batch's keys, in DALI's output order: image; label int64 (B,) (−100: unlabelled, or a repeat); slide, x, y
# int64 (B,); repeat bool (B,): a sample repeated to even out the ranks' shards (or standing in for a failed slide's).
BATCH_KEYS = ("image", "label", "slide", "x", "y", "repeat")
PRESETS = ("train", "eval")  # "eval": no shuffle, no augmentation unless asked for


def default_augment(seed: int) -> Augment:
    """The training augmentation when the batch format is not given: ``Augment(rot90=True, flip=True,
    max_shift=16, seed=seed)``."""
    return Augment(rot90=True, flip=True, max_shift=16, seed=int(seed))


def default_lanes() -> int:
    """Lanes run in threads when ``lanes=`` is not given: the CPU cores, at most 4."""
    return min(4, os.cpu_count() or 1)


def dali_installed() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True
