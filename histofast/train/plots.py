"""PNG plots of training and evaluation: loss and accuracy per epoch, ROC curves, confusion matrix.

Figures are drawn on matplotlib's Agg canvas without pyplot (no global state, safe in threads, no
display) and written atomically, so a reader never sees half a PNG."""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import HistofastError
from ..utils.atomic import atomic_path
from .metrics import Report

DPI = 100


def _figure(width: float, height: float, columns: int = 1) -> tuple[Any, list]:
    """A constrained-layout figure of ``width`` × ``height`` inches on an Agg canvas and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def _save(figure: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)  # tmp ends in .tmp: name the format


def _series(epochs: np.ndarray, metrics: list[Mapping | None], key: str) -> tuple[np.ndarray, np.ndarray]:
    """The epochs that have ``metrics[k][key]`` and its values: the line joins the epochs present
    (validation every few epochs still draws one line)."""
    values = np.array([math.nan if (m or {}).get(key) is None else float(m[key]) for m in metrics])
    present = ~np.isnan(values)
    return epochs[present], values[present]


# Train and validation apart by line, marker and (for the loss) colour, not by line style alone.
_SPLIT_STYLE = {"train": dict(linestyle="-", marker="o"),
                "val": dict(linestyle="--", marker="s", markerfacecolor="white")}


def plot_history(history: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Loss (left) and every ``*_acc`` accuracy (right) per epoch; train solid with dots, validation dashed with
    open squares; one tick per whole epoch (a single epoch too).

    Args:
        history: per-epoch records ``{"epoch": int (0-based), "stage": str, "train": {...}, "val": {...}}``
            whose metric dicts map names to floats; a dict, a key or a value may be missing or None.
            With more than one distinct stage, dotted vertical lines separate the stages and name them.
        path: the PNG to write.
    """
    _save(history_figure(history), path)


def history_figure(history: Sequence[Mapping]) -> Any:
    """``plot_history``'s figure (matplotlib ``Figure``, axes: loss, accuracy), not yet saved."""
    if not history:
        raise HistofastError("history: empty, expected at least one epoch record")
    for i, record in enumerate(history):
        if not isinstance(record, Mapping):
            raise HistofastError(f"history[{i}]: {type(record).__name__}, expected a dict")
    epochs = np.array([record.get("epoch", i) + 1 for i, record in enumerate(history)], dtype=np.float64)
    splits = {"train": [r.get("train") for r in history], "val": [r.get("val") for r in history]}
    accuracies = list(dict.fromkeys(key for metrics in splits["train"] + splits["val"] if metrics
                                    for key in metrics if key.endswith("_acc")))

    from matplotlib.ticker import MaxNLocator

    figure, (loss_axes, acc_axes) = _figure(11, 4.2, columns=2)
    colours = {key: f"C{i + 1}" for i, key in enumerate(accuracies)}
    for split, style in _SPLIT_STYLE.items():
        x, loss = _series(epochs, splits[split], "loss")
        if x.size:
            loss_axes.plot(x, loss, color="C0" if split == "train" else "C3", markersize=4, label=f"{split} loss",
                           **style)
        for key in accuracies:
            x, values = _series(epochs, splits[split], key)
            if x.size:
                acc_axes.plot(x, values, color=colours[key], markersize=4, label=f"{split} {key}", **style)

    stages = [record.get("stage") for record in history]
    for axes, title, ylabel in ((loss_axes, "loss", "loss"), (acc_axes, "accuracy", "accuracy")):
        if len(set(stages)) > 1:
            starts = [i for i in range(len(stages)) if i == 0 or stages[i] != stages[i - 1]]
            for i in starts:
                # A boundary sits halfway between the last epoch of one stage and the first of the next.
                x = epochs[i] if i == 0 else (epochs[i - 1] + epochs[i]) / 2
                if i:
                    axes.axvline(x, color="0.4", linestyle=":", linewidth=1)
                axes.text(x, 0.98, f" {stages[i]}", transform=axes.get_xaxis_transform(), va="top",
                          fontsize=8, color="0.3")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, even just one
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8, loc="best")
    if accuracies:
        acc_axes.set_ylim(-0.02, 1.02)
    return figure


def plot_roc(report: Report, path: str | os.PathLike, title: str = "") -> None:
    """One-vs-rest ROC curve per class with its AUC in the legend, and the chance diagonal.

    Args:
        report: a ``Report`` (its ``roc``, ``auc``, ``classes`` and ``macro_auc``).
        path: the PNG to write.
        title: the figure title; the macro AUC is appended.
    """
    figure, (axes,) = _figure(5.5, 5.2)
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    for name, (fpr, tpr), area in zip(report.classes, report.roc, report.auc):
        # An undefined curve (NaN rates) draws nothing but keeps its legend entry.
        label = f"{name} (AUC n/a)" if math.isnan(area) else f"{name} (AUC {area:.3f})"
        axes.plot(fpr, tpr, linewidth=1.5, label=label)
    macro = "n/a" if math.isnan(report.macro_auc) else f"{report.macro_auc:.3f}"
    axes.set_title(f"{title}  (macro AUC {macro})" if title else f"macro AUC {macro}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    _save(figure, path)


def plot_confusion(report: Report, path: str | os.PathLike, title: str = "") -> None:
    """Confusion matrix heatmap coloured by the row-normalised fraction, each cell showing its count
    and its percentage of the true class.

    Args:
        report: a ``Report`` (its ``confusion`` and ``classes``).
        path: the PNG to write.
        title: the figure title.
    """
    confusion = np.asarray(report.confusion)
    num_classes = confusion.shape[0]
    support = confusion.sum(axis=1, keepdims=True)
    fractions = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    side = max(4.5, 0.7 * num_classes + 2.5)
    figure, (axes,) = _figure(side + 1, side)
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    fontsize = 9 if num_classes <= 8 else 7
    for (i, j), count in np.ndenumerate(confusion):
        share = f"{100 * fractions[i, j]:.0f}%" if support[i, 0] else "–"
        axes.text(j, i, f"{count}\n{share}", ha="center", va="center", fontsize=fontsize,
                  color="white" if fractions[i, j] > 0.5 else "black")
    ticks = np.arange(num_classes)
    slanted = num_classes > 4 or max(len(name) for name in report.classes) > 8
    axes.set_xticks(ticks, report.classes, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    axes.set_yticks(ticks, report.classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title)
    _save(figure, path)
