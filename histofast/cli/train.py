"""``histofast train``: train a model on labelled slides; every flag is also a key of a YAML/JSON ``--config``."""
from __future__ import annotations

import argparse
import logging
from typing import Any


def add_parser(commands: Any) -> None:
    from ..train.config import add_arguments  # torch-free: the flags come from TrainConfig's fields

    train = commands.add_parser(
        "train", help="train a model (two-level CNN or a baseline) on labelled slides",
        description="Train on a manifest CSV (path,label[,patient]), class folders or TFRecord shards. Validation "
        "is a patient-disjoint split of DATA unless --val-data is given. Writes OUT/last.pt after every epoch, "
        "OUT/best.pt, history.jsonl, steps.jsonl and curves/ROC/confusion plots. two_level_cnn trains its patch "
        "stage (the patch net on patches) for --patch-epochs, then its image stage (the image net on frozen patch "
        "maps) for --epochs, then end to end for --finetune-epochs. Prints a line every --log-interval batches and "
        "at each epoch's last batch (loss, samples/s) and a line per epoch (losses, accuracies, seconds), as they "
        "happen, also when the output goes to a file. --resume of a run that has done all its epochs says so and "
        "changes nothing; give more epochs to continue it. Under torchrun (torchrun --nproc_per_node N [--nnodes M] "
        "-m histofast.cli train ...) every rank trains its shard of the data with DistributedDataParallel (nccl on "
        "the GPUs, cuda:LOCAL_RANK each; gloo with --device cpu), --batch-size per rank, and rank 0 alone writes "
        "and prints.",
    )
    add_arguments(train)
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue the run of this last.pt exactly")
    train.add_argument("--quiet", action="store_true", help="no progress bars (the batch and epoch lines stay)")
    train.add_argument("-v", "--verbose", action="store_true", help="log details (INFO) to stderr too")
    train.set_defaults(run=run)


# The flag that sets each stage's epochs (what --resume of a finished run may raise to continue it).
_STAGE_FLAGS = {"train": "--epochs", "patch": "--patch-epochs", "image": "--epochs", "finetune": "--finetune-epochs"}


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..errors import HistofastError
    from ..train.checkpoint import read_checkpoint
    from ..train.config import TrainConfig, from_arguments, given_values
    from ..train.run import TWO_LEVEL_STAGES, fit
    from .common import FlagNames

    flags = FlagNames(f.name for f in dataclasses.fields(TrainConfig))
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(flags)
    try:
        if args.resume:  # the checkpoint's settings, with the flags given on top (fit checks which may change)
            saved = read_checkpoint(args.resume)["config"]
            config = TrainConfig.from_dict({**saved, **given_values(args)}, f"checkpoint {args.resume}")
        else:
            config = from_arguments(args)
        result = fit(config, resume=args.resume, progress=False if args.quiet else None)
    except HistofastError as e:
        raise HistofastError(flags(str(e))) from None
    finally:
        for handler in handlers:
            handler.removeFilter(flags)
    if result.rank != 0:  # under torchrun, rank 0 alone reports
        return 0
    if result.already_complete:
        n, last = len(result.history), result.history[-1]["stage"] if result.history else "train"
        later = TWO_LEVEL_STAGES[TWO_LEVEL_STAGES.index(last):] if last in TWO_LEVEL_STAGES else (last,)
        flags = " or ".join(dict.fromkeys(_STAGE_FLAGS[s] for s in later))
        print(f"{args.resume}: already complete: {n} of {n} epochs, nothing to do; give more {flags} to continue")
    if result.best:
        print(f"best: {result.best['metric']} {result.best['value']:.4f} at epoch {result.best['epoch'] + 1} "
              f"→ {result.best_checkpoint}")
    if not result.already_complete:
        print(f"last: {result.checkpoint}; history, steps and plots in {config.out}")
    return 0
