"""Evaluation: ``evaluate(checkpoint, data)`` scores a trained model on labelled slides, with optional
8-view test-time augmentation, and aggregates tile predictions to slide predictions."""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..renamed import renamed_keyword
from ..utils.atomic import atomic_open
from . import metrics, plots
from .checkpoint import model_from_checkpoint, read_checkpoint
from .config import TrainConfig
from .distributed import caller_world
from .epoch import EpochResult, reports, slide_predictions
from .loop import prepare_model, resolve_device, run_epoch
from .pipelines import make_pipeline


@dataclass
class Evaluation:
    """``reports`` per scope ("patch", "image", "slide", as the data allows; empty without labels) and one
    row per slide: path, samples, mean probabilities, predicted class, label."""
    reports: dict[str, metrics.Report]
    slides: list[dict[str, Any]]
    classes: list[str]

    def table(self) -> str:
        """The per-class table of every scope, as ``histofast evaluate`` prints it."""
        return "\n\n".join(f"{scope} level\n{r.table()}" for scope, r in self.reports.items())


def evaluate(checkpoint: str | os.PathLike, data: Any, *, tta: int = 1, out: str | os.PathLike | None = None,
             device: str = "auto", batch_size: int | None = None, lanes: int | None = None,
             progress: bool | None = None, **deprecated: Any) -> Evaluation:
    """Score the model of ``checkpoint`` (``best.pt``/``last.pt`` of ``fit``) on ``data``.

    Tiles or images are cut as in training (same tile size, stride, level, white test, normalisation),
    without augmentation. A slide's prediction is the mean of its images' (or tiles') probabilities.

    Args:
        data: a manifest CSV, class folders, slide paths or TFRecord shards. Unlabelled slides are predicted
            but give no metrics.
        tta: 8 averages the probabilities of the 8 dihedral views of every input.
        out: when given, writes ``metrics.json`` (with the checkpoint, the data and ``tta`` it scored),
            ``slides.csv``, and ``roc_<scope>.png``/``confusion_<scope>.png`` per patch, image, slide.
        device, batch_size, lanes: override the training run's (``workers=``: 0.x's name of ``lanes``).

    Inside an initialised ``torch.distributed`` process group every rank must call it: each scores its
    shard, the results are gathered (every sample once), every rank returns them, rank 0 alone writes ``out``.
    """
    lanes = renamed_keyword(deprecated, "evaluate", "workers", "lanes", lanes)
    if deprecated:
        raise TypeError(f"evaluate() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
    state = read_checkpoint(checkpoint)
    overrides = {k: v for k, v in (("batch_size", batch_size), ("lanes", lanes)) if v is not None}
    config = TrainConfig.from_dict({**state["config"], **overrides, "device": device, "max_batches": None},
                                   f"checkpoint {checkpoint}")
    classes = list(state["classes"])
    dev = resolve_device(device)
    model = prepare_model(model_from_checkpoint(state, os.fspath(checkpoint)), dev, config.channels_last, False)
    progress = sys.stderr.isatty() if progress is None else progress
    pipe = make_pipeline(config, data, train=False, classes=classes, device="cpu" if dev.type == "cpu" else str(dev))
    stage = "image" if state["model"] == "two_level_cnn" else "train"
    world = caller_world()
    with torch.no_grad():
        result = run_epoch(model, pipe, stage, config, dev, len(classes), desc="evaluate",
                           progress=progress and world.main, tta=tta, world=world)
    reps = reports(result, classes)
    for r in reps.values():
        r.loss = None  # a per-slide or per-image mean of patch losses would mislead
    if "image" in reps or "patch" in reps:
        (reps.get("image") or reps["patch"]).loss = result.loss
    rows = _slide_rows(result, getattr(pipe, "slides", None), classes)
    evaluation = Evaluation(reps, rows, classes)
    if out is not None and world.main:
        _write(Path(out), evaluation, tta, os.fspath(checkpoint), data_record(data))
    return evaluation


def data_record(data: Any) -> str | list[str] | None:
    """How metrics.json names ``data``: the absolute path (or paths); None for other kinds of data."""
    if isinstance(data, (str, os.PathLike)):
        return os.path.abspath(os.fspath(data))
    if isinstance(data, (list, tuple)) and all(isinstance(d, (str, os.PathLike)) for d in data):
        return [os.path.abspath(os.fspath(d)) for d in data]
    return None


def _slide_rows(result: EpochResult, slides: list[str] | None, classes: list[str]) -> list[dict[str, Any]]:
    if result.slides is None or slides is None:
        return []
    return [{"slide": slides[i], "samples": int(n), "predicted": classes[int(p.argmax())],
             "label": classes[y] if y >= 0 else "", **{f"p_{c}": float(v) for c, v in zip(classes, p)}}
            for i, p, n, y in zip(*slide_predictions(result))]


def _write(out: Path, evaluation: Evaluation, tta: int, checkpoint: str, data: str | list[str] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "metrics.json") as f:
        json.dump({"checkpoint": checkpoint, "data": data, "tta": tta, "classes": evaluation.classes,
                   **{scope: r.to_dict() for scope, r in evaluation.reports.items()}}, f, indent=1)
    if evaluation.slides:
        with atomic_open(out / "slides.csv", newline="") as f:
            writer = csv.DictWriter(f, list(evaluation.slides[0]))
            writer.writeheader()
            writer.writerows(evaluation.slides)
    for scope, r in evaluation.reports.items():
        plots.plot_roc(r, out / f"roc_{scope}.png", title=f"{scope} level, TTA {tta}")
        plots.plot_confusion(r, out / f"confusion_{scope}.png", title=f"{scope} level, TTA {tta}")

