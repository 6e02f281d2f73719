"""Classification metrics in plain numpy: confusion matrix, one-vs-rest ROC and AUC, per-class
precision and recall gathered in a ``Report``, and per-group (slide, image) probability averaging."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..checks import check_count
from ..errors import HistofastError


def _integers(values: object, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array; other shapes and non-integer dtypes raise."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise HistofastError(f"{name}: shape {array.shape}, expected a 1-D array")
    if array.dtype.kind not in "iu" and array.size:  # an empty list arrives as float64
        raise HistofastError(f"{name}: dtype {array.dtype}, expected an integer dtype")
    return array.astype(np.int64, copy=False)


def _in_range(values: np.ndarray, name: str, num_classes: int) -> None:
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)][0]
        raise HistofastError(f"{name}: value {bad} out of range, expected 0..{num_classes - 1}")


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    """A real-valued ``array`` as float64; NaN, infinities and non-real dtypes raise."""
    if array.dtype.kind not in "fiu":
        raise HistofastError(f"{name}: dtype {array.dtype}, expected a real dtype")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise HistofastError(f"{name}: contains NaN or infinite values, expected finite numbers")
    return array


def _probabilities(probabilities: object) -> np.ndarray:
    """``probabilities`` as a finite float64 (N, C) array."""
    array = np.asarray(probabilities)
    if array.ndim != 2:
        raise HistofastError(f"probabilities: shape {array.shape}, expected (N, C)")
    return _finite(array, "probabilities")


def confusion_matrix(labels: object, predictions: object, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) class pairs.

    Args:
        labels: int (N,) true classes in ``0..num_classes-1``.
        predictions: int (N,) predicted classes in the same range.
        num_classes: C.

    Returns:
        int64 (C, C): row ``i``, column ``j`` counts samples of true class ``i`` predicted as ``j``.
    """
    num_classes = check_count(num_classes, "num_classes")
    labels, predictions = _integers(labels, "labels"), _integers(predictions, "predictions")
    if labels.shape != predictions.shape:
        raise HistofastError(f"predictions: shape {predictions.shape} does not match labels {labels.shape}")
    _in_range(labels, "labels", num_classes)
    _in_range(predictions, "predictions", num_classes)
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.astype(np.int64, copy=False).reshape(num_classes, num_classes)


def roc_curve(scores: object, positives: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve of one binary problem, one point per distinct score (none dropped).

    Args:
        scores: float (N,) finite; higher means more likely positive.
        positives: bool (N,) (or 0/1 integers) marking the positive samples.

    Returns:
        ``(fpr, tpr, thresholds)``, float64 (K + 1,) each for K distinct scores: thresholds
        decreasing from ``+inf``; point ``k`` counts samples with score ≥ ``thresholds[k]`` as
        predicted positive, so the curve starts at (0, 0) and ends at (1, 1). The same points as
        ``sklearn.metrics.roc_curve(positives, scores, drop_intermediate=False)``. Without
        negatives ``fpr`` is all NaN, without positives ``tpr`` is all NaN (the rate is 0/0).
    """
    scores = np.asarray(scores)
    if scores.ndim != 1 or scores.size == 0:
        raise HistofastError(f"scores: shape {scores.shape}, expected a non-empty 1-D array")
    scores = _finite(scores, "scores")
    positives = np.asarray(positives)
    if positives.shape != scores.shape:
        raise HistofastError(f"positives: shape {positives.shape} does not match scores {scores.shape}")
    if positives.dtype != bool:
        if positives.dtype.kind not in "iu" or not np.isin(positives, (0, 1)).all():
            raise HistofastError(f"positives: dtype {positives.dtype} with values other than 0/1, expected bool")
        positives = positives.astype(bool)

    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    # The last sample of each run of tied scores closes one threshold: ties enter the curve together.
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(positives)[ends]
    fps = ends + 1 - tps
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    fpr = fps / fps[-1] if fps[-1] else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] else np.full(tps.shape, np.nan)
    return fpr, tpr, np.r_[np.inf, scores[ends]]


def auc(fpr: object, tpr: object) -> float:
    """Trapezoid area under the curve through the points ``(fpr[k], tpr[k])``.

    Args:
        fpr: float (K,), K ≥ 2, non-decreasing (as ``roc_curve`` returns it).
        tpr: float (K,).

    Returns:
        The area as a float; NaN when any input is NaN.
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if fpr.ndim != 1 or fpr.size < 2:
        raise HistofastError(f"fpr: shape {fpr.shape}, expected a 1-D array of at least 2 points")
    if tpr.shape != fpr.shape:
        raise HistofastError(f"tpr: shape {tpr.shape} does not match fpr {fpr.shape}")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(eq=False)  # array fields: == between reports would be ambiguous
class Report:
    """Metrics of one evaluation over N samples and C classes.

    ``precision``, ``recall`` and ``auc`` are float64 (C,); ``auc[i]`` is one-vs-rest and NaN when
    class ``i`` is absent from the labels or is every label. ``macro_auc`` is the mean of the defined
    AUCs (NaN if none is). ``confusion`` is int64 (C, C), rows true and columns predicted classes;
    ``roc[i]`` is class ``i``'s (fpr, tpr) curve. ``loss`` is the mean loss when the caller knows it.
    """

    classes: list[str]
    count: int
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    auc: np.ndarray
    macro_auc: float
    confusion: np.ndarray
    roc: list[tuple[np.ndarray, np.ndarray]]
    loss: float | None = None

    def to_dict(self) -> dict:
        """Everything but the ROC curves as JSON-safe Python values; NaN becomes None."""
        return {
            "loss": None if self.loss is None else _json_float(self.loss),
            "count": int(self.count),
            "accuracy": _json_float(self.accuracy),
            "precision": [_json_float(v) for v in self.precision],
            "recall": [_json_float(v) for v in self.recall],
            "auc": [_json_float(v) for v in self.auc],
            "macro_auc": _json_float(self.macro_auc),
            "confusion": self.confusion.astype(int).tolist(),
            "classes": list(self.classes),
        }

    def table(self) -> str:
        """A fixed-width text table: one row per class (support, precision, recall, AUC), then a
        line with accuracy, macro AUC, count and loss."""
        width = max([5, *(len(name) for name in self.classes)])

        def number(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.3f}"

        lines = [f"{'class':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>6}  {'AUC':>5}"]
        for name, support, p, r, a in zip(self.classes, self.confusion.sum(axis=1), self.precision,
                                          self.recall, self.auc):
            lines.append(f"{name:<{width}}  {support:>7}  {number(p):>9}  {number(r):>6}  {number(a):>5}")
        summary = f"accuracy {number(self.accuracy)}  macro AUC {number(self.macro_auc)}  count {self.count}"
        if self.loss is not None:
            summary += f"  loss {self.loss:.4f}"
        return "\n".join(lines + [summary])


def classification_report(probabilities: object, labels: object, classes: Sequence[str],
                          loss: float | None = None) -> Report:
    """Accuracy, per-class precision, recall and one-vs-rest AUC of probabilistic predictions.

    Args:
        probabilities: float (N, C), N ≥ 1, C ≥ 2: per-sample class probabilities (e.g. softmax);
            predictions are the row argmax, AUCs rank each column.
        labels: int (N,) true classes in ``0..C-1``.
        classes: C class names.
        loss: the mean loss over the same samples, if known; stored as given.

    Returns:
        A ``Report``. Precision of a class never predicted and recall of a class without samples are 0
        (scikit-learn's ``zero_division=0``).
    """
    probabilities = _probabilities(probabilities)
    labels = _integers(labels, "labels")
    count, num_classes = probabilities.shape
    if labels.shape != (count,):
        raise HistofastError(f"labels: shape {labels.shape} does not match probabilities {probabilities.shape}")
    if count == 0:
        raise HistofastError(f"probabilities: shape {probabilities.shape}, expected at least one sample")
    if num_classes < 2:
        raise HistofastError(f"probabilities: shape {probabilities.shape}, expected at least 2 classes")
    classes = [str(name) for name in classes]
    if len(classes) != num_classes:
        raise HistofastError(f"classes: {len(classes)} names do not match probabilities {probabilities.shape}")
    _in_range(labels, "labels", num_classes)

    confusion = confusion_matrix(labels, probabilities.argmax(axis=1), num_classes)
    hits = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(num_classes), where=support > 0)

    roc = []
    for i in range(num_classes):
        fpr, tpr, _ = roc_curve(probabilities[:, i], labels == i)
        roc.append((fpr, tpr))
    aucs = np.array([auc(fpr, tpr) for fpr, tpr in roc])
    defined = aucs[~np.isnan(aucs)]
    return Report(
        classes=classes, count=count, accuracy=float(hits.sum() / count), precision=precision,
        recall=recall, auc=aucs, macro_auc=float(defined.mean()) if defined.size else math.nan,
        confusion=confusion, roc=roc, loss=None if loss is None else float(loss),
    )


def aggregate(probabilities: object, groups: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean probabilities per group, e.g. a slide's prediction from its tiles'.

    Args:
        probabilities: float (N, C) per-sample probabilities.
        groups: int (N,) the group id of each sample.

    Returns:
        ``(group_ids, means, counts)``: the sorted distinct ids int64 (G,), the mean probabilities of
        each group's samples float64 (G, C), and each group's sample count int64 (G,). N = 0 gives G = 0.
    """
    probabilities = _probabilities(probabilities)
    groups = _integers(groups, "groups")
    if groups.shape != probabilities.shape[:1]:
        raise HistofastError(f"groups: shape {groups.shape} does not match probabilities {probabilities.shape}")
    if groups.size == 0:
        return (np.zeros(0, np.int64), np.zeros((0, probabilities.shape[1])), np.zeros(0, np.int64))
    order = np.argsort(groups, kind="stable")
    groups = groups[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    counts = np.diff(np.r_[starts, groups.size]).astype(np.int64)
    sums = np.add.reduceat(probabilities[order], starts, axis=0)
    return groups[starts], sums / counts[:, None], counts
