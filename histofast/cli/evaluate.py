"""``histofast evaluate``: score a checkpoint on labelled slides: per-class tables, plots, slide predictions."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score a checkpoint on labelled slides: tables, ROC and confusion plots, slide predictions",
        description="Cut DATA as the checkpoint's training did (no augmentation), predict, and print per-class "
        "precision, recall and AUC per patch, image and slide (a slide's prediction is the mean of its "
        "images' or tiles' probabilities).",
    )
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt or last.pt of 'histofast train'")
    evaluate.add_argument("data", metavar="DATA", help="manifest CSV, class folders, slide file or TFRecord shards")
    evaluate.add_argument("--tta", type=int, choices=(1, 8), default=1,
                          help="8: average the 8 dihedral views (rot90 × flip) of every input (default 1)")
    evaluate.add_argument("--out", metavar="DIR", help="write metrics.json, slides.csv and plots here (default: "
                          "evaluate-<data>-tta<N> beside the checkpoint, refused when it holds the evaluation of "
                          "other data or another checkpoint)")
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    evaluate.add_argument("--batch-size", type=int, help="default: the training run's")
    evaluate.add_argument("--lanes", type=int, help="Pipeline lanes (default: the training run's)")
    evaluate.add_argument("--workers", type=int, dest="lanes", help=argparse.SUPPRESS)  # 0.x's --lanes
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(run=run)


def _default_out(checkpoint: str, data: str, tta: int) -> str:
    """evaluate-<data stem>-tta<N> beside the checkpoint, unless it holds what another evaluation wrote: of other
    data (say a/test.csv, then b/test.csv) or of another checkpoint (best.pt, then last.pt)."""
    from ..errors import HistofastError
    from ..train.evaluate import data_record

    out = Path(checkpoint).parent / f"evaluate-{Path(data).stem}-tta{tta}"
    if (out / "metrics.json").exists():
        try:
            held = json.loads((out / "metrics.json").read_text())
        except (OSError, ValueError):
            held = {}
        if not isinstance(held, dict):
            held = {}
        same_data = held.get("data") == data_record(data)
        same_checkpoint = Path(str(held.get("checkpoint"))).name == Path(checkpoint).name
        if not (same_data and same_checkpoint):
            raise HistofastError(f"{out} holds the evaluation of {held.get('checkpoint', 'another checkpoint')} on "
                                 f"{held.get('data') or 'other data'}; pass --out DIR to write this one elsewhere "
                                 "(or remove that folder)")
    return os.fspath(out)


def run(args: argparse.Namespace) -> int:
    from ..train.evaluate import evaluate

    if args.out is None:
        args.out = _default_out(args.checkpoint, args.data, args.tta)
    result = evaluate(args.checkpoint, args.data, tta=args.tta, out=args.out, device=args.device,
                      batch_size=args.batch_size, lanes=args.lanes, progress=False if args.quiet else None)
    if not result.reports:
        print("no labelled slides: predictions only", file=sys.stderr)
    print(result.table())
    for row in result.slides:
        label = f", label {row['label']}" if row["label"] else ""
        print(f"{row['slide']}: {row['predicted']} ({row['samples']} samples{label})")
    print(f"metrics.json, slides.csv and plots in {args.out}")
    return 0
