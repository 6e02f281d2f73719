"""``histofast train``: train a model on labelled slides; every flag is also a key of a YAML/JSON ``--config``."""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    from ..train.config import add_arguments  # torch-free: the flags come from TrainConfig's fields

    train = commands.add_parser(
        "train", help="train a model (two-level CNN or a baseline) on labelled slides",
        description="Train on a manifest CSV (path,label[,patient]), class folders or TFRecord shards. Validation "
        "is a patient-disjoint split of DATA unless --val-data is given. Writes OUT/last.pt after every epoch, "
        "OUT/best.pt, history.jsonl, steps.jsonl and curves/ROC/confusion plots. two_level_cnn trains its patch "
        "stage (the patch net on patches) for --patch-epochs, then its image stage (the image net on frozen patch "
        "maps) for --epochs, then end to end for --finetune-epochs.",
    )
    add_arguments(train)
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue the run of this last.pt exactly")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("-v", "--verbose", action="store_true", help="log every --log-interval batches and epoch")
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.checkpoint import read_checkpoint
    from ..train.config import TrainConfig, from_arguments, given_values
    from ..train.run import describe, fit

    if args.resume:  # the checkpoint's settings, with the flags given on top (fit checks which may change)
        saved = read_checkpoint(args.resume)["config"]
        config = TrainConfig.from_dict({**saved, **given_values(args)}, f"checkpoint {args.resume}")
    else:
        config = from_arguments(args)
    result = fit(config, resume=args.resume, progress=False if args.quiet else None)
    print(describe(result.history))
    if result.best:
        print(f"best: {result.best['metric']} {result.best['value']:.4f} at epoch {result.best['epoch'] + 1} "
              f"→ {result.best_checkpoint}")
    print(f"last: {result.checkpoint}; history, steps and plots in {config.out}")
    return 0
