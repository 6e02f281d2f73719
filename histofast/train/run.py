"""``fit(config)``: one training run through ``Pipeline``, epoch by epoch and stage by stage, with a
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
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .._version import __version__
from ..data._common import default_lanes
from ..errors import HistofastError
from ..models import TwoLevelCNN, build_model, check_model_name, freeze, load_pretrained, load_state
from ..utils.atomic import atomic_open
from . import metrics, plots
from .checkpoint import CHECKPOINT_FORMAT, read_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import World, current_rank, rank_seed, setup, sync_batchnorm
from .epoch import drop_unlabelled, reports, summary
from .loop import amp_dtype, batch_count, prepare_model, run_epoch, stage_module
from .pipelines import image_size_of, load_data

log = logging.getLogger(__name__)

# The stages of two_level_cnn: the patch net on patches, the image net on frozen patch maps, then end to end.
TWO_LEVEL_STAGES = ("patch", "image", "finetune")


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
    """The stage of every epoch: two_level_cnn runs ``patch_epochs`` of its patch stage, ``epochs`` of its image
    stage and ``finetune_epochs`` end to end; the other models ``epochs`` of "train"."""
    if config.model != "two_level_cnn":
        return ["train"] * config.epochs
    counts = (config.epochs if config.patch_epochs is None else config.patch_epochs, config.epochs,
              config.finetune_epochs)
    return [s for s, n in zip(TWO_LEVEL_STAGES, counts) for _ in range(n)]



def _optimizer(config: TrainConfig, model: nn.Module, stage: str, n_epochs: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer of ``stage``'s trainable parameters (patch stage: the patch net, image stage: the image net), and
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



# Settings a resumed run may change without changing its course (both backends give the same batches).
_RESUME_MAY_CHANGE = ("epochs", "patch_epochs", "finetune_epochs", "device", "backend", "log_interval", "out",
                      "max_batches")


@dataclass
class FitResult:
    """What ``fit`` leaves: the per-epoch ``history`` records, the best epoch, the output files.
    ``already_complete``: ``resume`` named a run that had trained all the epochs of the schedule, so nothing was
    trained or written (``checkpoint`` is then that checkpoint). ``rank``: this process's rank (0 without
    torchrun); rank 0 wrote the files."""
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    classes: list[str]
    checkpoint: Path
    best_checkpoint: Path | None
    already_complete: bool = False
    rank: int = 0


def _monitor(has_images: bool) -> str:
    """The accuracy that picks best.pt: per image when there are images, else per tile."""
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


def fit(config: TrainConfig, *, resume: str | os.PathLike | None = None, progress: bool | None = None,
        report: Callable[[str], None] | None = None) -> FitResult:
    """Train ``config.model`` on ``config.data`` and validate every epoch.

    Writes to ``config.out``: ``last.pt`` after every epoch and ``best.pt`` at the best validation
    ``image_acc`` (``patch_acc`` without images; patch-stage epochs of two_level_cnn are not candidates),
    ``history.jsonl`` (one record per epoch: loss, patch/image/slide accuracy and full reports for train
    and val), ``steps.jsonl`` (every ``log_interval`` batches and each epoch's last batch, whose record covers
    the batches since the previous one), ``curves.png``, ``roc.png`` and
    ``confusion.png`` (validation). Checkpoints hold only ``torch.load(weights_only=True)``-safe values.

    Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1), or in a process group the caller initialised,
    every rank calls ``fit`` and trains with ``DistributedDataParallel`` (see ``histofast.train.distributed``):
    each rank on its GPU (``cuda:LOCAL_RANK``) or the CPU (gloo), on its shard of the data (``batch_size`` per
    rank), with gradients averaged so that N ranks × batch B train as one process with batch N·B would (exactly
    for models without BatchNorm, or with ``sync_bn`` on GPUs). Metrics count every sample of every rank once;
    rank 0 alone writes the files, reports and shows progress bars, and every rank returns the same result.

    Args:
        resume: a ``last.pt`` to continue from: the run goes on exactly as if it had not stopped (same
            weights, optimizer, scheduler, RNG of every rank, data order; bit for bit on the CPU, up to cuDNN's
            nondeterministic kernels on a GPU) when it has as many ranks as before; ``config`` may add epochs to
            the last stage. When the checkpoint already holds every epoch of ``config``'s schedule, nothing is
            trained or written: the result is the finished run's, with ``already_complete`` set. Every rank
            reads the file: under torchrun on several nodes, a path all of them can read.
        progress: tqdm bars (default: when stderr is a terminal).
        report: called with each line of the run's log as it happens: the start, one line every
            ``log_interval`` batches and at each epoch's last batch (batch, loss, samples/s), one line per epoch
            (losses, accuracies, seconds). Default ``print_line``: each line on stdout, flushed, around any
            progress bar (as ``histofast train`` shows them); ``report=logging.getLogger(...).info`` routes them,
            ``report=lambda line: None`` silences them.
    Raises:
        TrainingError: a non-finite loss (the message names the epoch and batch; ``last.pt`` keeps the last
            good epoch). HistofastError: bad configuration or data.
    """
    progress = sys.stderr.isatty() if progress is None else progress
    say = report if report is not None else print_line
    check_model_name(config.model)
    state = None
    if resume is not None:
        state = read_checkpoint(resume)
        saved = TrainConfig.from_dict(state["config"], f"checkpoint {resume}")
        if config.lanes is None:
            config = dataclasses.replace(config, lanes=saved.lanes)
        changed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _RESUME_MAY_CHANGE
                   and getattr(saved, f.name) != getattr(config, f.name)]
        if changed:
            raise HistofastError(f"resume={os.fspath(resume)}: the run was trained with other settings of "
                                 f"{', '.join(changed)}; resume with the checkpoint's config (only "
                                 f"{', '.join(_RESUME_MAY_CHANGE)} may change)")
        done = [r["stage"] for r in state["history"]]
        if done == stages(config):  # nothing to add: leave the run as it is
            log.info("resume=%s: already complete (%d of %d epochs)", os.fspath(resume), len(done), len(done))
            best_path = Path(resume).parent / "best.pt"
            return FitResult(list(state["history"]), state["best"], list(state["classes"]), Path(resume),
                             best_path if state["best"] is not None and best_path.exists() else None,
                             already_complete=True, rank=current_rank())
    world, device = setup(config.device)
    try:
        result = _fit(config, state, resume, world, device, progress and world.main,
                      say if world.main else lambda line: None)
        # Last, a collective of no tensors: gloo's threads drop the tensors of the ones before while this waits, not
        # while the interpreter exits (a thread taking the GIL then aborts the process).
        world.barrier()
        return result
    finally:
        world.close()


def print_line(line: str) -> None:
    """One line of a run's log on stdout, flushed (a file or pipe sees it at once), around any progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def _fit(config: TrainConfig, state: dict[str, Any] | None, resume: str | os.PathLike | None, world: World,
         device: torch.device, progress: bool, say: Callable[[str], None]) -> FitResult:
    if config.sync_bn and world.distributed and device.type != "cuda":
        raise HistofastError("sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; train on the GPUs (--device cuda) "
                             "or leave --sync-bn out")
    out = Path(config.out)
    if world.main:  # rank 0 alone looks at and writes the output folder; every rank stops on its verdict
        held = state is None and (out / "last.pt").exists()
        world.agree(f"out={config.out}: holds the run of {out / 'last.pt'}; resume it (--resume) or choose another "
                    "--out" if held else None)
    else:
        world.agree(None)
    if world.distributed and config.lanes is None:  # the order depends on it: the same on every rank, pinned
        config = dataclasses.replace(config, lanes=world.broadcast(default_lanes()))
    train_pipe, val_pipe, classes = load_data(config, "cpu" if device.type == "cpu" else str(device), progress)
    if world.main:  # only once there is something to train: a run that cannot start leaves no empty folder
        out.mkdir(parents=True, exist_ok=True)
    if config.lanes is None and hasattr(train_pipe, "tile_dataset"):  # the order depends on it: pin it for resume
        config = dataclasses.replace(config, lanes=train_pipe.tile_dataset.num_lanes)
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
            raise HistofastError(f"resume={os.fspath(resume)}: classes {state['classes']} in the checkpoint, "
                                 f"{classes} in the data")
        load_state(model, state["state_dict"], f"checkpoint {resume}")
    if config.sync_bn and world.distributed:
        sync_batchnorm(model)
    model = prepare_model(model, device, config.channels_last, config.compile)
    if world.distributed:  # the same weights on every rank (from seed); then each rank its own draws (dropout)
        torch.manual_seed(rank_seed(config.seed, world.rank))
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
        _restore_rng(state, world, resume)
    n = len(schedule)
    on = f"{device}" if not world.distributed else f"{world.size} ranks ({device.type}, {dist.get_backend()})"
    say(f"training {config.model} ({len(classes)} classes: {', '.join(classes)}) for {n} epoch{'s' * (n != 1)} on "
        f"{on}{f', from epoch {start + 1}' if start else ''}; data {train_pipe}")
    for epoch in range(start, len(schedule)):
        stage = schedule[epoch]
        if stage != current:
            optimizer, scheduler = _optimizer(config, model, stage, schedule.count(stage))
            current = stage
        # A fresh DDP wrapper each epoch: its gradient buckets then start each epoch alike, in a resumed run too.
        net = world.wrap(stage_module(model, stage), device)
        train_pipe.set_epoch(epoch)
        tic = time.perf_counter()
        steps: list[dict[str, Any]] = []
        batches = batch_count(train_pipe, config.max_batches)

        def on_log(batch: int, loss: float, seen: int, epoch: int = epoch, stage: str = stage, tic: float = tic,
                   steps: list = steps, optimizer: torch.optim.Optimizer = optimizer,
                   batches: int | None = batches) -> None:
            rate = seen / (time.perf_counter() - tic)
            steps.append({"epoch": epoch, "stage": stage, "batch": batch, "loss": loss,
                          "lr": optimizer.param_groups[0]["lr"], "samples_per_s": rate})
            say(f"epoch {epoch + 1}/{len(schedule)} ({stage}) batch {batch}{f'/{batches}' if batches else ''}: "
                f"loss {loss:.4f}, {rate:.1f} samples/s")

        lr = optimizer.param_groups[0]["lr"]
        train_result = run_epoch(model, train_pipe, stage, config, device, len(classes), optimizer=optimizer,
                                 scaler=scaler, desc=f"epoch {epoch + 1}/{len(schedule)} {stage}", progress=progress,
                                 on_log=on_log, checkpoint=last, net=net, world=world)
        del net
        world.sync_buffers(model)  # rank 0's BatchNorm statistics, which the checkpoint holds, on every rank
        if scheduler is not None:
            scheduler.step()
        train_reports = reports(drop_unlabelled(train_result), classes)
        record: dict[str, Any] = {"epoch": epoch, "stage": stage, "lr": lr,
                                  "train": summary(train_result, train_reports)}
        val_reports: dict[str, metrics.Report] = {}
        if val_pipe is not None:
            with torch.no_grad():
                val_result = drop_unlabelled(run_epoch(model, val_pipe, stage, config, device, len(classes),
                                                       desc=f"epoch {epoch + 1} val", progress=progress,
                                                       checkpoint=last, world=world))
            val_reports = reports(val_result, classes)
            record["val"] = summary(val_result, val_reports)
        record["seconds"] = time.perf_counter() - tic
        monitored = record.get("val", record["train"]).get(_monitor(has_images))
        improved = stage != "patch" and monitored is not None and (best is None or monitored > best["value"])
        if improved:
            best = {"metric": ("val_" if val_pipe is not None else "train_") + _monitor(has_images),
                    "value": monitored, "epoch": epoch}
        # Every rank computed the same metrics from the same gathered samples; rank 0's record decides all the same.
        record, improved, best = world.broadcast((record, improved, best))
        history.append(record)
        rngs = world.gather(rng_state())  # each rank's random state, for an exact resume
        if world.main:
            checkpoint = {
                "format": CHECKPOINT_FORMAT, "histofast": __version__, "model": config.model,
                "model_options": options, "classes": classes, "config": config.to_dict(),
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "epoch": epoch + 1, "stage": stage,
                "best": best, "history": history, "rng": rngs[0], "world_size": world.size, "rng_ranks": rngs,
            }
            if improved:  # best first: last.pt never names a best epoch that best.pt does not hold
                save_checkpoint(best_path, checkpoint)
            save_checkpoint(last, checkpoint)
            _append_steps(out / "steps.jsonl", steps, epoch)
            _write_outputs(out, history, val_reports or train_reports)
            say(_epoch_report(record, len(schedule)))
        world.barrier()  # the epoch's files exist before any rank goes on (or returns)
    has_best = world.broadcast(world.main and best_path.exists())  # rank 0's folder (other nodes may not see it)
    return FitResult(history, best, classes, last, best_path if has_best else None, rank=world.rank)


def _restore_rng(state: dict[str, Any], world: World, resume: str | os.PathLike | None) -> None:
    """Each rank's random state from the checkpoint, when it has as many ranks as the run had; else the draws
    go on from the ranks' fresh seeds (rank 0 says the run is then not the one it would have been)."""
    ranks = state.get("world_size", 1)
    if ranks == world.size:
        set_rng_state(state["rng_ranks"][world.rank] if "rng_ranks" in state else state["rng"])
    elif world.main:
        log.warning("resume=%s: the run had %d rank%s, this one has %d: it goes on, but not as the run would have "
                    "(each rank's share of the data and its random draws differ)", os.fspath(resume), ranks,
                    "s" * (ranks != 1), world.size)


def _epoch_line(record: dict[str, Any]) -> str:
    parts = []
    for part in ("train", "val"):
        if part in record:
            r = record[part]
            accs = " ".join(f"{k[:-4]} {r[k]:.3f}" for k in r if k.endswith("_acc") and r[k] is not None)
            parts.append(f"{part} loss {r['loss']:.4f} acc {accs}")
    return "; ".join(parts) + f"; {record['seconds']:.1f} s"


def _epoch_report(record: dict[str, Any], total: int | None = None) -> str:
    """An epoch's line of the log: "epoch 3 (image): train loss … acc …; val loss … acc …; 12.3 s; 3/5 epochs done"."""
    done = f"; {record['epoch'] + 1}/{total} epochs done" if total else ""
    return f"epoch {record['epoch'] + 1} ({record['stage']}): {_epoch_line(record)}{done}"


def describe(history: list[dict[str, Any]]) -> str:
    """One line per epoch of ``history`` (a ``FitResult``'s or a checkpoint's)."""
    return "\n".join(_epoch_report(r) for r in history)


