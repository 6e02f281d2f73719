"""One pass of a model over a ``Pipeline``: ``forward`` (a batch through any model, with the loss of the
training stage), ``stage_module`` (what a stage trains, the module DDP wraps), ``run_epoch`` (training or
evaluation, NaN checks, optional 8-view TTA, across the ranks of a ``World``) and the device and precision
settings both training and evaluation use."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HistofastError
from ..models import TwoLevelCNN
from .config import TrainConfig
from .epoch import EpochResult
from .tta import dihedral_views, mean_over_views

if TYPE_CHECKING:
    from .distributed import World

IGNORE = -100  # labels below 0 (unlabelled samples, repeats evening out the ranks' shards: −100) are not counted


class TrainingError(HistofastError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


@dataclass
class Outputs:
    """One batch through a model: the loss of its stage, and detached float32 class probabilities of every
    patch or tile (N·P or N, C) and, with images, of every image (N, C)."""
    loss: torch.Tensor
    patch: torch.Tensor
    image: torch.Tensor | None


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled samples (label ≥ 0); 0 for a batch with none (not NaN)."""
    total = F.cross_entropy(logits.float(), labels.where(labels >= 0, IGNORE), ignore_index=IGNORE, reduction="sum")
    return total / (labels >= 0).sum().clamp_min(1)


class TwoLevelStage(nn.Module):
    """What one stage of a ``TwoLevelCNN`` trains, as a module of exactly those parameters (so that
    ``DistributedDataParallel`` wraps it with every parameter used at every step): the patch net (stage
    "patch"), the image net on patch maps made without gradients (stage "image"), or the patch net's
    feature layers and the image net (stage "finetune": the patch head is not in the image loss).

    ``forward(images)`` → (patch-head logits [B·P, C], image logits [B, C] or None in the patch stage); the
    patch head's logits outside the patch stage are made without gradients (they are only reported)."""

    def __init__(self, model: TwoLevelCNN, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self._model = (model,)  # the whole model, not registered: only the stage's parts are this module's
        if stage == "patch":
            self.patch_net = model.patch_net
        elif stage == "image":
            self.image_net = model.image_net
        else:
            self.stages, self.to_map, self.image_net = model.patch_net.stages, model.patch_net.to_map, model.image_net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self._model[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage != "image"):  # image stage: frozen maps
            maps = model.patch_maps(images)
        if self.stage == "patch":  # the image net is not trained (nor run) in the patch stage
            return model.patch_net.head(maps).flatten(0, 1), None
        with torch.no_grad():
            patch = model.patch_net.head(maps)
        return patch.flatten(0, 1), model.image_net(maps)


def stage_module(model: nn.Module, stage: str) -> nn.Module:
    """The module that ``stage`` trains and ``forward`` runs: a ``TwoLevelStage`` of a ``TwoLevelCNN``, else the
    model itself (its frozen layers, ``freeze``, have no gradients and are left out by DDP)."""
    return TwoLevelStage(model, stage) if isinstance(model, TwoLevelCNN) else model


def forward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, stage: str, *,
            input_size: int | None = None, channels_last: bool = False, net: nn.Module | None = None) -> Outputs:
    """Run ``images`` ([N, 3, T, T] tiles or [N, P, 3, t, t] images) through ``model`` for ``stage``.

    Tile models see every patch of an image with the image's label, and an image's prediction is the mean
    of its patches' probabilities; TwoLevelCNN gives patch (patch head) and image predictions, with the
    loss of the patch head in stage "patch" and of the image net otherwise. Negative labels (−100: unlabelled,
    or a repeat evening out the ranks' shards) are left out of the loss.

    ``net``: what runs the stage, ``stage_module(model, stage)`` (the default) or that module in
    ``DistributedDataParallel``."""
    net = stage_module(model, stage) if net is None else net
    if isinstance(model, TwoLevelCNN):
        patch_logits, image_logits = net(images)
        patch_labels = labels.repeat_interleave(model.num_patches)
        loss = _loss(patch_logits, patch_labels) if stage == "patch" else _loss(image_logits, labels)
        image = None if image_logits is None else image_logits.detach().float().softmax(1)
        return Outputs(loss, patch_logits.detach().float().softmax(1), image)
    per_image = images.ndim == 5
    x = images.flatten(0, 1) if per_image else images
    if input_size and x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = net(x)
    logits, aux = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    y = labels.repeat_interleave(images.shape[1]) if per_image else labels
    loss = _loss(logits, y)
    for weight, a in zip(getattr(model, "aux_weights", ()), aux):
        loss = loss + weight * _loss(a, y)
    patch = logits.detach().float().softmax(1)
    return Outputs(loss, patch, patch.view(len(images), -1, patch.shape[1]).mean(1) if per_image else None)


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
    """Training labels must be class indices, or −100 for repeats that even out the ranks' shards (one device
    sync per epoch)."""
    bad = labels[((labels < 0) & (labels != IGNORE)) | (labels >= num_classes)]
    if len(bad):
        raise HistofastError(f"{where}: label {int(bad[0])} is not a class index 0..{num_classes - 1} "
                             "(TFRecord shards exported without --label, or --classes too short?)")


def batch_count(pipe: Any, max_batches: int | None) -> int | None:
    """The batches ``run_epoch`` takes from ``pipe`` (at most ``max_batches``); None when ``pipe`` has no length."""
    total = len(pipe) if hasattr(pipe, "__len__") else None
    return min(total or max_batches, max_batches) if max_batches else total


def run_epoch(model: nn.Module, pipe: Iterable[dict[str, torch.Tensor]], stage: str, config: TrainConfig,
              device: torch.device, num_classes: int, *, optimizer: torch.optim.Optimizer | None = None,
              scaler: torch.amp.GradScaler | None = None, desc: str = "", progress: bool = False,
              on_log: Callable[[int, float, int], None] | None = None, checkpoint: Path | None = None,
              tta: int = 1, net: nn.Module | None = None, world: World | None = None) -> EpochResult:
    """One pass over ``pipe``: training when ``optimizer`` is given (else evaluation, no gradients).

    Losses are checked for NaN/inf every ``log_interval`` batches and at the end (one device sync each),
    so a bad batch is named without a sync per batch. ``on_log(batch, mean loss, samples seen)`` is called every
    ``log_interval`` batches and after the last batch (when not already), the loss being the mean over the batches
    since the previous call. ``tta`` 8 averages the 8 dihedral views (evaluation). ``net``: what runs the stage
    (``stage_module``, or it in ``DistributedDataParallel``).

    With a ``world`` of several ranks (each iterating its shard of ``pipe``, the same number of batches):
    each rank's loss is scaled so that DDP's average of the ranks' gradients is the gradient of the mean loss
    over all the ranks' labelled samples (what one process with the ranks' batches together computes, also when
    repeats evening out the shards, label −100, leave ranks with different counts); the losses checked and
    logged are those means, the same on every rank (all ranks stop together on a NaN); samples seen count
    every rank's; and the result holds every rank's samples (gathered, in rank order), on every rank.

    The result leaves out the samples a batch marks ``repeat`` (bool (B,): repeats evening out the ranks' shards,
    or standing in for a failed slide's), so every tile is predicted and counted once, labelled or not."""
    from tqdm import tqdm

    train = optimizer is not None
    ranks = world.size if world is not None and world.distributed else 1
    model.train(train)
    if train and isinstance(model, TwoLevelCNN) and stage == "image":
        model.patch_net.eval()  # frozen: its BatchNorm keeps its statistics
    net = stage_module(model, stage) if net is None else net
    dtype = amp_dtype(config.amp, device)
    losses: list[torch.Tensor] = []  # per batch: the mean loss over its labelled samples (of all ranks)
    counts: list[torch.Tensor] = []  # per batch: its labelled samples (of all ranks)
    keep: dict[str, list[torch.Tensor]] = {k: [] for k in ("patch", "image", "label", "slide", "repeat")}
    checked = 0

    def check() -> None:  # the batches since the last check: reduced over the ranks, then checked for NaN/inf
        nonlocal checked
        if ranks > 1 and len(losses) > checked:
            new = torch.stack([torch.stack(losses[checked:]).double(), torch.stack(counts[checked:]).double()])
            new[0] *= new[1]  # a NaN stays NaN, also from a rank without labelled samples
            world.all_reduce(new)
            losses[checked:] = list(new[0] / new[1].clamp_min(1))
            counts[checked:] = list(new[1])
        _check_finite(losses[checked:], checked, where, checkpoint, train)
        checked = len(losses)

    bar = tqdm(total=batch_count(pipe, config.max_batches), desc=desc, unit="batch", disable=not progress,
               leave=False, file=sys.stderr)
    where = f"{desc or stage}"
    seen = 0
    logged = 0  # batches that on_log has reported
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
                            channels_last=config.channels_last and device.type == "cuda", net=net) for v in views]
        out = outs[0] if len(outs) == 1 else Outputs(
            torch.stack([o.loss for o in outs]).mean(), mean_over_views([o.patch for o in outs], images),
            None if outs[0].image is None else torch.stack([o.image for o in outs]).mean(0))
        labelled = (labels >= 0).sum()  # the loss is a mean over labelled samples
        if train:
            loss = out.loss
            if ranks > 1:  # DDP averages the ranks' gradients: weigh each rank's mean by its share of the samples
                total = world.all_reduce(labelled.clone())
                loss = loss * (labelled * ranks / total.clamp_min(1))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        losses.append(out.loss.detach())
        counts.append(labelled)
        keep["patch"].append(out.patch)
        keep["image"].append(out.image)
        keep["label"].append(labels)
        keep["slide"].append(batch.get("slide"))
        keep["repeat"].append(batch.get("repeat"))
        seen += len(labels) * ranks
        bar.update()
        if (i + 1) % config.log_interval == 0:
            check()
            recent = torch.stack(losses[logged:]).mean().item()
            bar.set_postfix(loss=f"{recent:.4f}")
            logged = i + 1
            if on_log is not None:
                on_log(i + 1, recent, seen)
    bar.close()
    if not losses:  # every rank has the same number of batches: all raise together
        raise HistofastError(f"{where}: the data gave no batches (no tissue tiles kept?)")
    check()
    if on_log is not None and logged < len(losses):  # the last batch, for the batches since the last report
        on_log(len(losses), torch.stack(losses[logged:]).mean().item(), seen)
    weights = torch.stack(counts).double().cpu().numpy()
    per_batch = torch.stack(losses).double().cpu().numpy()
    loss = float(np.average(per_batch, weights=weights)) if weights.sum() else float("nan")
    cpu = {k: None if not v or v[0] is None else torch.cat(v).cpu().numpy() for k, v in keep.items()}
    if ranks > 1:  # every rank's samples, on every rank
        parts = world.gather(cpu)
        cpu = {k: None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in cpu}
    return _counted_once(loss, cpu, len(losses))


def _counted_once(loss: float, cpu: dict[str, np.ndarray | None], batches: int) -> EpochResult:
    """The epoch's result from its gathered arrays (``patch`` (N·P or N, C), ``image`` (N, C) or None, ``label``,
    ``slide`` (N,) or None, ``repeat`` bool (N,) or None) without the samples marked ``repeat``: the repeats that
    even out the ranks' shards or stand in for a failed slide's samples, so that every sample counts once in the
    predictions and metrics, labelled or not."""
    labels = cpu["label"]
    per = len(cpu["patch"]) // len(labels)
    keep = None if cpu["repeat"] is None else ~cpu["repeat"].astype(bool)
    if keep is not None and not keep.all():
        cpu = {k: None if v is None else v[np.repeat(keep, per) if k == "patch" else keep] for k, v in cpu.items()}
        labels = cpu["label"]
    return EpochResult(loss, cpu["patch"], np.repeat(labels, per), cpu["image"], labels, cpu["slide"], batches)
