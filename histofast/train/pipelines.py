"""The data of a training run: its ``Pipeline``s (or ``TFRecordPipeline``s) made from a ``TrainConfig``,
with the validation split by patient when no validation data is given."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..augment import Augment
from ..data import resolve, split
from ..data.pipeline import Pipeline
from ..errors import HistofastError
from ..specs import BatchFormat
from .config import TrainConfig


def image_size_of(config: TrainConfig) -> int | None:
    """The image side of ``mode="images"`` data: ``config.image_size``, or 2560 for the two-level model."""
    return config.image_size or (2560 if config.model == "two_level_cnn" else None)


def is_tfrecord(source: Any) -> bool:
    """Whether ``source`` is a TFRecord shard or a folder holding some (``Pipeline.from_tfrecord`` data)."""
    p = Path(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else None
    return p is not None and (p.suffix == ".tfrecord" or (p.is_dir() and next(p.rglob("*.tfrecord"), None) is not None))


def make_pipeline(config: TrainConfig, source: Any, *, train: bool, classes: list[str] | None, device: str,
                  progress: bool = False) -> Any:
    """The ``Pipeline`` (or ``TFRecordPipeline``) of ``source`` with ``config``'s sample settings; training
    pipelines shuffle and augment, evaluation pipelines do neither (``preset="eval"``). Under torch.distributed
    each rank iterates its shard (taken from the process group when iterating), ``batch_size`` per rank."""
    augment = Augment.parse(config.augment, config.seed) if train else None
    batch = BatchFormat(config.batch_size, augment, "float32", "NCHW", config.mean, config.std)
    common = dict(batch=batch, preset="train" if train else "eval", seed=config.seed, device=device)
    if is_tfrecord(source):
        if image_size_of(config):
            raise HistofastError(f"data={os.fspath(source)}: TFRecord shards hold tiles; {config.model} with images "
                                 "needs slides or regions (a manifest or class folders)")
        return Pipeline.from_tfrecord(source, threads=config.lanes, **common)
    return Pipeline(source, grid=config.grid, backend=config.backend, classes=classes, image_size=image_size_of(config),
                    lanes=config.lanes, progress=progress, **common)


def _check_labelled(source: Any, name: str) -> None:
    unlabelled = [s.path for s in resolve(source) if s.label is None]
    if unlabelled:
        raise HistofastError(f"{name}: {len(unlabelled)} slides have no label (first: {unlabelled[0]}); training "
                             "needs a label per slide (a manifest 'label' column or class folders)")


def load_data(config: TrainConfig, device: str, progress: bool = False) -> tuple[Any, Any | None, list[str]]:
    """(train pipeline, validation pipeline or None, class names) for ``config``."""
    train_src, val_src = config.data, config.val_data
    if is_tfrecord(train_src):
        if not config.classes:
            raise HistofastError(f"data={train_src}: TFRecord shards store class indices; name the classes with "
                                 "--classes")
        if val_src is None and config.val_fraction > 0:
            raise HistofastError(f"data={train_src}: TFRecord shards cannot be split by patient here; give --val-data "
                                 "(or --val-fraction 0)")
    else:
        _check_labelled(train_src, "data")
        if val_src is None and config.val_fraction > 0:
            train_src, val_src = split(config.data, by=config.split_by, seed=config.seed,
                                       fractions=(1 - config.val_fraction, config.val_fraction))
            if not val_src:
                raise HistofastError(f"data={config.data}: too few {config.split_by}s to hold out "
                                     f"{config.val_fraction:g} for validation; give --val-data or --val-fraction 0")
    train = make_pipeline(config, train_src, train=True, classes=config.classes, device=device, progress=progress)
    classes = list(config.classes or train.classes)
    if len(classes) < 2:
        raise HistofastError(f"data={config.data}: a single class ({', '.join(map(repr, classes)) or 'none'}); "
                             "a classifier needs at least two")
    val = None if val_src is None else make_pipeline(config, val_src, train=False, classes=classes, device=device)
    return train, val, classes
