"""What one pass over the data yields (``EpochResult``) and its metrics per patch (or tile), image and slide:
``reports``, ``slide_predictions`` and the JSON ``summary`` of ``history.jsonl``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics


@dataclass
class EpochResult:
    """Everything an epoch's metrics are computed from, on the CPU."""
    loss: float
    patch: np.ndarray  # (N·P or N, C) probabilities
    patch_labels: np.ndarray
    image: np.ndarray | None  # (N, C)
    labels: np.ndarray  # (N,)
    slides: np.ndarray | None  # (N,) slide index, None when the batches carry none
    batches: int


def reports(result: EpochResult, classes: list[str]) -> dict[str, metrics.Report]:
    """Reports of an epoch per patch (or tile), image and slide; a slide's prediction is the mean of its
    images' (or tiles') probabilities. Samples without a label (< 0: −100) are left out."""
    out = {}
    labelled = result.labels >= 0
    if not labelled.any():
        return out
    patch_ok = result.patch_labels >= 0
    out["patch"] = metrics.classification_report(result.patch[patch_ok], result.patch_labels[patch_ok], classes)
    if result.image is not None:
        out["image"] = metrics.classification_report(result.image[labelled], result.labels[labelled], classes)
    if result.slides is not None:
        _, mean, _, slide_labels = slide_predictions(result)
        ok = slide_labels >= 0
        out["slide"] = metrics.classification_report(mean[ok], slide_labels[ok], classes)
    return out


def slide_predictions(result: EpochResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per slide of the epoch (sorted by index): slide index (S,), mean probabilities (S, C) of its images
    (or of its tiles, patches, when there is no image prediction), how many (S,), and its label (S,)."""
    if result.image is not None:
        probs, slides, labels = result.image, result.slides, result.labels
    else:
        per = len(result.patch) // len(result.labels)
        probs, slides, labels = result.patch, np.repeat(result.slides, per), result.patch_labels
    ids, mean, counts = metrics.aggregate(probs, slides)
    slide_labels = np.full(len(ids), -100, np.int64)  # a slide's labelled samples share its label
    np.maximum.at(slide_labels, np.searchsorted(ids, slides), labels)
    return ids, mean, counts, slide_labels


def drop_unlabelled(result: EpochResult) -> EpochResult:
    """``result`` without its samples of label < 0: in labelled data (training, validation) these are the
    repeats that even out the ranks' shards (or stand in for a slide that failed mid-epoch), so every sample
    is then counted once."""
    keep = result.labels >= 0
    if keep.all():
        return result
    per = len(result.patch) // len(result.labels)
    keep_patch = np.repeat(keep, per)
    return EpochResult(result.loss, result.patch[keep_patch], result.patch_labels[keep_patch],
                       None if result.image is None else result.image[keep], result.labels[keep],
                       None if result.slides is None else result.slides[keep], result.batches)


def summary(result: EpochResult, reps: dict[str, metrics.Report]) -> dict[str, Any]:
    """The JSON record of one split's epoch: loss, ``<scope>_acc`` and the full report per scope (patch, image,
    slide)."""
    record: dict[str, Any] = {"loss": result.loss}
    for scope, rep in reps.items():
        record[f"{scope}_acc"] = rep.accuracy
        record[scope] = rep.to_dict()
    return record

