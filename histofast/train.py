"""Training: ``fit(config)`` trains a model on slides (or TFRecord shards) through ``Pipeline``, with a
checkpoint after every epoch, exact ``resume``, per-epoch metrics as JSON lines and PNG plots."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, metrics, plots
from .atomic import atomic_open, atomic_path
from .augment import Augment
from .config import TrainConfig
from .errors import HistofastError
from .models import TwoLevelCNN, build_model, check_model_name, freeze, load_pretrained, load_state
from .pipeline import Pipeline
from .sources import resolve, split
from .tta import dihedral_views, mean_over_views

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "histofast.checkpoint/1"
TWO_LEVEL_STAGES = ("patch", "image", "finetune")  # level 1 on patches, level 2 on frozen maps, end to end


class TrainingError(HistofastError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


# ---------------------------------------------------------------- data


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
    pipelines shuffle and augment, evaluation pipelines do neither."""
    augment = Augment.parse(config.augment, config.seed) if train else None
    common = dict(augment=augment, batch_size=config.batch_size, dtype="float32", mean=config.mean, std=config.std,
                  shuffle=train, seed=config.seed, device=device, workers=config.workers)
    if is_tfrecord(source):
        if image_size_of(config):
            raise HistofastError(f"data={os.fspath(source)}: TFRecord shards hold tiles; {config.model} with images "
                                 "needs slides or regions (a manifest or class folders)")
        return Pipeline.from_tfrecord(source, **common)
    size = image_size_of(config)
    return Pipeline(source, config.tile_size, config.stride, backend=config.backend, classes=classes,
                    mode="images" if size else "tiles", image_size=size or 2560, level=config.level, mpp=config.mpp,
                    magnification=config.magnification, max_white=config.max_white, progress=progress, **common)


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
            raise HistofastError(f"data={train_src}: TFRecord shards store class indices; name the classes with --classes")
        if val_src is None and config.val_fraction > 0:
            raise HistofastError(f"data={train_src}: TFRecord shards cannot be split by patient here; give --val-data "
                                 "(or --val-fraction 0)")
    else:
        _check_labelled(train_src, "data")
        if val_src is None and config.val_fraction > 0:
            train_src, val_src = split(config.data, by=config.split_by, seed=config.seed,
                                       fractions=(1 - config.val_fraction, config.val_fraction))
            if not val_src:
                raise HistofastError(f"data={config.data}: too few {config.split_by}s to hold out {config.val_fraction:g} "
                                     "for validation; give --val-data or --val-fraction 0")
    train = make_pipeline(config, train_src, train=True, classes=config.classes, device=device, progress=progress)
    classes = list(config.classes or train.classes)
    if len(classes) < 2:
        raise HistofastError(f"data={config.data}: a single class ({', '.join(map(repr, classes)) or 'none'}); "
                             "a classifier needs at least two")
    val = None if val_src is None else make_pipeline(config, val_src, train=False, classes=classes, device=device)
    return train, val, classes


# ---------------------------------------------------------------- model


def model_options(config: TrainConfig) -> dict[str, Any]:
    """Constructor keywords of ``config.model`` (besides ``num_classes``)."""
    if config.model == "two_level_cnn":
        return dict(tile_size=config.tile_size, image_size=image_size_of(config),
                    patch_stride=config.stride or config.tile_size, patch_widths=list(config.patch_widths),
                    image_widths=list(config.image_widths))
    if config.model in ("googlenet", "inception_v3"):  # torchvision's ImageNet weights expect their input transform
        return dict(aux_logits=config.aux_logits, transform_input=bool(config.pretrained))
    return {}


def stages(config: TrainConfig) -> list[str]:
    """The stage of every epoch: two_level_cnn runs ``patch_epochs`` of level 1, ``epochs`` of level 2 and
    ``finetune_epochs`` end to end; the other models ``epochs`` of "train"."""
    if config.model != "two_level_cnn":
        return ["train"] * config.epochs
    counts = (config.epochs if config.patch_epochs is None else config.patch_epochs, config.epochs,
              config.finetune_epochs)
    return [s for s, n in zip(TWO_LEVEL_STAGES, counts) for _ in range(n)]


@dataclass
class Outputs:
    """One batch through a model: the loss of its stage, and detached float32 class probabilities of every
    patch or tile (N·P or N, C) and, with images, of every image (N, C)."""
    loss: torch.Tensor
    patch: torch.Tensor
    image: torch.Tensor | None


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled samples (label ≥ 0); 0 for a batch with none (not NaN)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    return total / (labels >= 0).sum().clamp_min(1)


def forward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, stage: str, *,
            input_size: int | None = None, channels_last: bool = False) -> Outputs:
    """Run ``images`` ([N, 3, T, T] tiles or [N, P, 3, t, t] images) through ``model`` for ``stage``.

    Tile models see every patch of an image with the image's label, and an image's prediction is the mean
    of its patches' probabilities; TwoLevelCNN gives patch (level-1 head) and image predictions, with the
    loss of level 1 in stage "patch" and of level 2 otherwise. Labels −1 are left out of the loss."""
    if isinstance(model, TwoLevelCNN):
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage != "image"):  # level 2: frozen patch maps
            maps = model.patch_maps(images)
        patch_logits = model.patch_net.head(maps).flatten(0, 1)
        patch_labels = labels.repeat_interleave(model.num_patches)
        image_logits = None if stage == "patch" else model.image_net(maps)  # level 1: the image net is untrained
        loss = _loss(patch_logits, patch_labels) if stage == "patch" else _loss(image_logits, labels)
        image = None if image_logits is None else image_logits.detach().float().softmax(1)
        return Outputs(loss, patch_logits.detach().float().softmax(1), image)
    per_image = images.ndim == 5
    x = images.flatten(0, 1) if per_image else images
    if input_size and x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x)
    logits, aux = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    y = labels.repeat_interleave(images.shape[1]) if per_image else labels
    loss = _loss(logits, y)
    for weight, a in zip(getattr(model, "aux_weights", ()), aux):
        loss = loss + weight * _loss(a, y)
    patch = logits.detach().float().softmax(1)
    return Outputs(loss, patch, patch.view(len(images), -1, patch.shape[1]).mean(1) if per_image else None)


def _optimizer(config: TrainConfig, model: nn.Module, stage: str, n_epochs: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer of ``stage``'s trainable parameters (level 1: the patch net, level 2: the image net), and
    SGD's step decay over the stage's ``n_epochs`` (×0.1 at ``lr_steps``, default a third and two thirds)."""
    if isinstance(model, TwoLevelCNN) and stage != "finetune":
        module = model.patch_net if stage == "patch" else model.image_net
    else:
        module = model
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, config.learning_rate, betas=(0.9, 0.999),
                                weight_decay=config.weight_decay), None
    opt = torch.optim.SGD(params, config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)
    steps = config.lr_steps or sorted({max(1, n_epochs // 3), max(1, 2 * n_epochs // 3)})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, steps, gamma=0.1)


def resolve_device(device: str) -> torch.device:
    """"auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N" → a torch device that exists here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise HistofastError(f"device={device!r}: expected cpu, cuda, cuda:N or auto") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise HistofastError(f"device={device!r}: no CUDA device is available here (use --device cpu)")
    if d.type not in ("cpu", "cuda"):
        raise HistofastError(f"device={device!r}: expected cpu, cuda, cuda:N or auto")
    return d


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` ("auto": bf16 on a GPU, none on the CPU)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool, compile: bool) -> nn.Module:
    """Move ``model`` to ``device`` (channels-last on a GPU when asked) and compile it in place when asked."""
    model.to(device)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if compile:  # in place, so state_dict keys and the two-level methods stay as they are
        for m in (model.patch_net.stages, model.image_net) if isinstance(model, TwoLevelCNN) else (model,):
            m.compile()
    return model


# ---------------------------------------------------------------- epochs


@dataclass
class EpochResult:
    """Everything an epoch's metrics are computed from, on the CPU."""
    loss: float
    patch: np.ndarray  # (N·P or N, C) probabilities
    patch_labels: np.ndarray
    image: np.ndarray | None  # (N, C)
    labels: np.ndarray  # (N,)
    slides: np.ndarray | None  # (N,) slide index, None for TFRecord data
    batches: int


def _check_finite(losses: list[torch.Tensor], first: int, where: str, checkpoint: Path | None,
                  training: bool) -> None:
    if not losses:
        return
    values = torch.stack(losses).float().cpu()
    bad = torch.nonzero(~torch.isfinite(values)).flatten()
    if len(bad):
        kept = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None and checkpoint.exists()
                else "no checkpoint was written yet")
        hint = "try a lower --lr, or --amp off" if training else "the model's weights or the input are not finite"
        raise TrainingError(f"loss is {values[bad[0]].item()} at {where} batch {first + int(bad[0]) + 1}: stopped; "
                            f"{kept} ({hint})")


def _check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Training labels must be class indices (one device sync per epoch)."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise HistofastError(f"{where}: label {low if low < 0 else high} is not a class index 0..{num_classes - 1} "
                             "(TFRecord shards exported without --label, or --classes too short?)")


def run_epoch(model: nn.Module, pipe: Iterable[dict[str, torch.Tensor]], stage: str, config: TrainConfig,
              device: torch.device, num_classes: int, *, optimizer: torch.optim.Optimizer | None = None,
              scaler: torch.amp.GradScaler | None = None, desc: str = "", progress: bool = False,
              on_log: Callable[[int, float, int], None] | None = None, checkpoint: Path | None = None,
              tta: int = 1) -> EpochResult:
    """One pass over ``pipe``: training when ``optimizer`` is given (else evaluation, no gradients).

    Losses are checked for NaN/inf every ``log_interval`` batches and at the end (one device sync each),
    so a bad batch is named without a sync per batch. ``tta`` 8 averages the 8 dihedral views (evaluation)."""
    from tqdm import tqdm

    train = optimizer is not None
    model.train(train)
    if train and isinstance(model, TwoLevelCNN) and stage == "image":
        model.patch_net.eval()  # frozen: its BatchNorm keeps its statistics
    dtype = amp_dtype(config.amp, device)
    losses: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    keep: dict[str, list[torch.Tensor]] = {k: [] for k in ("patch", "image", "label", "slide")}
    checked = 0
    total = len(pipe) if hasattr(pipe, "__len__") else None
    if config.max_batches:
        total = min(total or config.max_batches, config.max_batches)
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress, leave=False, file=sys.stderr)
    where = f"{desc or stage}"
    seen = 0
    for i, batch in enumerate(pipe):
        if config.max_batches and i >= config.max_batches:
            break
        images, labels = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
        if train and i == 0:
            _check_labels(labels, num_classes, where)
        views = dihedral_views(images, tta)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None), \
                torch.set_grad_enabled(train):
            outs = [forward(model, v, labels, stage, input_size=config.input_size,
                            channels_last=config.channels_last and device.type == "cuda") for v in views]
        out = outs[0] if len(outs) == 1 else Outputs(
            torch.stack([o.loss for o in outs]).mean(), mean_over_views([o.patch for o in outs], images),
            None if outs[0].image is None else torch.stack([o.image for o in outs]).mean(0))
        if train:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        losses.append(out.loss.detach())
        counts.append((labels >= 0).sum())  # the loss is a mean over labelled samples
        keep["patch"].append(out.patch)
        keep["image"].append(out.image)
        keep["label"].append(labels)
        keep["slide"].append(batch.get("slide"))
        seen += len(labels)
        bar.update()
        if (i + 1) % config.log_interval == 0:
            _check_finite(losses[checked:], checked, where, checkpoint, train)
            checked = len(losses)
            recent = torch.stack(losses[-config.log_interval:]).mean().item()
            bar.set_postfix(loss=f"{recent:.4f}")
            if on_log is not None:
                on_log(i + 1, recent, seen)
    bar.close()
    if not losses:
        raise HistofastError(f"{where}: the data gave no batches (no tissue tiles kept?)")
    _check_finite(losses[checked:], checked, where, checkpoint, train)
    weights = torch.stack(counts).cpu().numpy()
    loss = float(np.average(torch.stack(losses).float().cpu().numpy(), weights=weights)) if weights.sum() else float("nan")
    cpu = {k: None if not v or v[0] is None else torch.cat(v).cpu().numpy() for k, v in keep.items()}
    labels = cpu["label"]
    per = len(cpu["patch"]) // len(labels)
    return EpochResult(loss, cpu["patch"], np.repeat(labels, per), cpu["image"], labels, cpu["slide"], len(losses))


def reports(result: EpochResult, classes: list[str]) -> dict[str, metrics.Report]:
    """Patch (or tile), image and slide-level reports of an epoch; a slide's prediction is the mean of its
    images' (or tiles') probabilities. Samples without a label (−1) are left out."""
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
    _, first = np.unique(slides, return_index=True)  # a slide's samples share its label
    return ids, mean, counts, labels[first]


def summary(result: EpochResult, reps: dict[str, metrics.Report]) -> dict[str, Any]:
    """The JSON record of one split's epoch: loss, ``<level>_acc`` and the full report per level."""
    record: dict[str, Any] = {"loss": result.loss}
    for level, rep in reps.items():
        record[f"{level}_acc"] = rep.accuracy
        record[level] = rep.to_dict()
    return record


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically: a crash mid-write leaves the previous checkpoint whole."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A histofast checkpoint, read with ``torch.load(weights_only=True)``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # reads only what is used
    except FileNotFoundError:
        raise HistofastError(f"checkpoint {os.fspath(path)}: no such file") from None
    except Exception as e:
        raise HistofastError(f"checkpoint {os.fspath(path)}: not readable with torch.load(weights_only=True) ({e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise HistofastError(f"checkpoint {os.fspath(path)}: not a histofast checkpoint (for a bare state dict, use "
                             "--pretrained / load_pretrained)")
    return state


def model_from_checkpoint(state: dict[str, Any], source: str) -> nn.Module:
    """The checkpoint's model with its weights (on the CPU)."""
    model = build_model(state["model"], len(state["classes"]), **state["model_options"])
    load_state(model, state["state_dict"], f"checkpoint {source}")
    return model


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- fit


# Settings a resumed run may change without changing its course (both backends give the same batches).
_RESUME_MAY_CHANGE = ("epochs", "patch_epochs", "finetune_epochs", "device", "backend", "log_interval", "out",
                      "max_batches")


@dataclass
class FitResult:
    """What ``fit`` leaves: the per-epoch ``history`` records, the best epoch, the output files."""
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    classes: list[str]
    checkpoint: Path
    best_checkpoint: Path | None


def _monitor(has_images: bool) -> str:
    """The accuracy that picks best.pt: image level when there are images, else tile level."""
    return "image_acc" if has_images else "patch_acc"


def _write_outputs(out: Path, history: list[dict[str, Any]], reps: dict[str, metrics.Report]) -> None:
    """history.jsonl and curves.png, and the ROC and confusion plots of ``reps`` (validation, else training)."""
    with atomic_open(out / "history.jsonl") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    plots.plot_history(history, out / "curves.png")
    level = "image" if "image" in reps else "patch"
    if level in reps:
        plots.plot_roc(reps[level], out / "roc.png", title=f"{level} level, epoch {history[-1]['epoch'] + 1}")
        plots.plot_confusion(reps[level], out / "confusion.png",
                             title=f"{level} level, epoch {history[-1]['epoch'] + 1}")


def _append_steps(path: Path, records: list[dict[str, Any]], epoch: int) -> None:
    """Append ``epoch``'s log-interval records to steps.jsonl (atomically), dropping any records of ``epoch``
    or later that an interrupted run left there."""
    old = path.read_text().splitlines() if path.exists() else []
    with atomic_open(path) as f:
        f.writelines(line + "\n" for line in old if json.loads(line)["epoch"] < epoch)
        f.writelines(json.dumps(r) + "\n" for r in records)


def fit(config: TrainConfig, *, resume: str | os.PathLike | None = None, progress: bool | None = None) -> FitResult:
    """Train ``config.model`` on ``config.data`` and validate every epoch.

    Writes to ``config.out``: ``last.pt`` after every epoch and ``best.pt`` at the best validation
    ``image_acc`` (``patch_acc`` without images; level-1 epochs of two_level_cnn are not candidates),
    ``history.jsonl`` (one record per epoch: loss, patch/image/slide accuracy and full reports for train
    and val), ``steps.jsonl`` (every ``log_interval`` batches), ``curves.png``, ``roc.png`` and
    ``confusion.png`` (validation). Checkpoints hold only ``torch.load(weights_only=True)``-safe values.

    Args:
        resume: a ``last.pt`` to continue from: the run goes on exactly as if it had not stopped (same
            weights, optimizer, scheduler, RNG, data order; bit for bit on the CPU, up to cuDNN's
            nondeterministic kernels on a GPU); ``config`` may add epochs to the last stage.
        progress: tqdm bars (default: when stderr is a terminal).
    Raises:
        TrainingError: a non-finite loss (the message names the epoch and batch; ``last.pt`` keeps the last
            good epoch). HistofastError: bad configuration or data.
    """
    progress = sys.stderr.isatty() if progress is None else progress
    check_model_name(config.model)
    state = None
    if resume is not None:
        state = read_checkpoint(resume)
        saved = TrainConfig.from_dict(state["config"], f"checkpoint {resume}")
        if config.workers is None:
            config = dataclasses.replace(config, workers=saved.workers)
        changed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _RESUME_MAY_CHANGE
                   and getattr(saved, f.name) != getattr(config, f.name)]
        if changed:
            raise HistofastError(f"resume={os.fspath(resume)}: the run was trained with other settings of "
                                 f"{', '.join(changed)}; resume with the checkpoint's config (only "
                                 f"{', '.join(_RESUME_MAY_CHANGE)} may change)")
    device = resolve_device(config.device)
    out = Path(config.out)
    if state is None and (out / "last.pt").exists():
        raise HistofastError(f"out={config.out}: holds the run of {out / 'last.pt'}; resume it (--resume) or choose "
                             "another --out")
    out.mkdir(parents=True, exist_ok=True)
    train_pipe, val_pipe, classes = load_data(config, "cpu" if device.type == "cpu" else str(device), progress)
    if config.workers is None and hasattr(train_pipe, "dataset"):  # the order depends on it: pin it for resume
        config = dataclasses.replace(config, workers=train_pipe.dataset.workers)
    torch.manual_seed(config.seed)
    options = model_options(config)
    model = build_model(config.model, len(classes), **options)
    if config.pretrained:
        load_pretrained(model, config.pretrained)
    if config.freeze_until:
        freeze(model, config.freeze_until)
    schedule = stages(config)
    if state is not None:
        if state["classes"] != classes:
            raise HistofastError(f"resume={os.fspath(resume)}: classes {state['classes']} in the checkpoint, {classes} in the data")
        load_state(model, state["state_dict"], f"checkpoint {resume}")
    model = prepare_model(model, device, config.channels_last, config.compile)
    dtype = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    start = 0 if state is None else state["epoch"]
    history: list[dict[str, Any]] = [] if state is None else list(state["history"])
    best = None if state is None else state["best"]
    last, best_path = out / "last.pt", out / "best.pt"
    has_images = image_size_of(config) is not None
    optimizer = scheduler = None
    current = None
    if state is not None and [r["stage"] for r in history] != schedule[:start]:
        raise HistofastError(f"resume={os.fspath(resume)}: its {start} epochs were {[r['stage'] for r in history]}, "
                             f"but these settings schedule {schedule[:start]} for them; only later stages may grow")
    if state is not None and start > 0:
        current = schedule[start - 1]
        optimizer, scheduler = _optimizer(config, model, current, schedule.count(current))
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
    log.info("training %s (%d classes: %s) for %d epochs on %s; data %s", config.model, len(classes),
             ", ".join(classes), len(schedule), device, train_pipe)
    for epoch in range(start, len(schedule)):
        stage = schedule[epoch]
        if stage != current:
            optimizer, scheduler = _optimizer(config, model, stage, schedule.count(stage))
            current = stage
        train_pipe.set_epoch(epoch)
        tic = time.perf_counter()
        steps: list[dict[str, Any]] = []

        def on_log(batch: int, loss: float, seen: int, epoch: int = epoch, stage: str = stage) -> None:
            rate = seen / (time.perf_counter() - tic)
            steps.append({"epoch": epoch, "stage": stage, "batch": batch, "loss": loss,
                          "lr": optimizer.param_groups[0]["lr"], "samples_per_s": rate})
            log.info("epoch %d (%s) batch %d: loss %.4f, %.1f samples/s", epoch + 1, stage, batch, loss, rate)

        lr = optimizer.param_groups[0]["lr"]
        train_result = run_epoch(model, train_pipe, stage, config, device, len(classes), optimizer=optimizer, scaler=scaler,
                                 desc=f"epoch {epoch + 1}/{len(schedule)} {stage}", progress=progress,
                                 on_log=on_log, checkpoint=last)
        if scheduler is not None:
            scheduler.step()
        train_reports = reports(train_result, classes)
        record: dict[str, Any] = {"epoch": epoch, "stage": stage, "lr": lr, "train": summary(train_result, train_reports)}
        val_reports: dict[str, metrics.Report] = {}
        if val_pipe is not None:
            with torch.no_grad():
                val_result = run_epoch(model, val_pipe, stage, config, device, len(classes), desc=f"epoch {epoch + 1} val",
                                       progress=progress, checkpoint=last)
            val_reports = reports(val_result, classes)
            record["val"] = summary(val_result, val_reports)
        record["seconds"] = time.perf_counter() - tic
        history.append(record)
        monitored = record.get("val", record["train"]).get(_monitor(has_images))
        improved = stage != "patch" and monitored is not None and (best is None or monitored > best["value"])
        if improved:
            best = {"metric": ("val_" if val_pipe is not None else "train_") + _monitor(has_images),
                    "value": monitored, "epoch": epoch}
        checkpoint = {
            "format": CHECKPOINT_FORMAT, "histofast": __version__, "model": config.model, "model_options": options,
            "classes": classes, "config": config.to_dict(), "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "epoch": epoch + 1, "stage": stage,
            "best": best, "history": history, "rng": _rng_state(),
        }
        if improved:  # best first: last.pt never names a best epoch that best.pt does not hold
            save_checkpoint(best_path, checkpoint)
        save_checkpoint(last, checkpoint)
        _append_steps(out / "steps.jsonl", steps, epoch)
        _write_outputs(out, history, val_reports or train_reports)
        log.info("epoch %d/%d (%s): %s", epoch + 1, len(schedule), stage, _epoch_line(record))
    return FitResult(history, best, classes, last, best_path if best_path.exists() else None)



def _epoch_line(record: dict[str, Any]) -> str:
    parts = []
    for part in ("train", "val"):
        if part in record:
            r = record[part]
            accs = " ".join(f"{k[:-4]} {r[k]:.3f}" for k in r if k.endswith("_acc") and r[k] is not None)
            parts.append(f"{part} loss {r['loss']:.4f} acc {accs}")
    return "; ".join(parts) + f"; {record['seconds']:.1f} s"


def describe(history: list[dict[str, Any]]) -> str:
    """One line per epoch, for the end of ``histofast train``."""
    return "\n".join(f"epoch {r['epoch'] + 1} ({r['stage']}): {_epoch_line(r)}" for r in history)


__all__ = ["FitResult", "TrainingError", "fit", "forward", "read_checkpoint", "model_from_checkpoint", "describe"]
