"""The `histofast` command: `tile` exports tissue tiles of slides, `demo` runs it on a generated
slide, `bench` measures tiles per second against the naive recipe and the decode limit, `train` and
`evaluate` fit and score the models."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                  ".png", ".jpg", ".jpeg"}


def _slides(items: Sequence[str]) -> list[str]:
    """SLIDE arguments with folders expanded to the slide and image files directly inside them."""
    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(os.fspath(f) for f in p.iterdir() if f.suffix.lower() in SLIDE_SUFFIXES and f.is_file())
        else:
            paths.append(item)
    return paths


def _export(args: argparse.Namespace, paths: Sequence[str]) -> int:
    from .augment import Augment
    from .export import ExportOptions, export_slides

    options = ExportOptions(
        tile_size=args.tile_size, stride=args.stride, level=args.level, mpp=args.mpp,
        magnification=args.magnification, max_white=args.max_white, hsv_lower=tuple(args.hsv_lower),
        hsv_upper=tuple(args.hsv_upper), format=args.format, quality=args.quality, label=args.label,
        augment=Augment.parse(args.augment, args.seed),
    )
    start = time.perf_counter()
    results = export_slides(paths, args.out, options, workers=args.workers, qc=args.qc,
                            progress=False if args.quiet else None)
    seconds = time.perf_counter() - start
    done = [r for r in results if r.status == "done"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"FAILED {r.slide}: {r.error}", file=sys.stderr)
    for r in done + skipped:
        if r.kept == 0:
            print(f"warning: {r.slide}: no tissue tiles (all {r.total} tiles are more than "
                  f"{args.max_white:g} white); try a higher --max-white", file=sys.stderr)
    kept, total = sum(r.kept for r in done), sum(r.total for r in done)
    print(f"{len(done)} slides tiled, {len(skipped)} already done, {len(failed)} failed; "
          f"tiles kept {kept}/{total}; {seconds:.1f} s; {total / max(seconds, 1e-9):,.0f} tiles/s scored, "
          f"{kept / max(seconds, 1e-9):,.0f} kept tiles/s written; manifest {Path(args.out) / 'manifest.csv'}")
    return 1 if failed else 0


def _tile(args: argparse.Namespace) -> int:
    paths = _slides(args.slides)
    if not paths:
        print(f"histofast tile: no slide files in {' '.join(args.slides)}", file=sys.stderr)
        return 2
    return _export(args, paths)


def _demo(args: argparse.Namespace) -> int:
    from . import build_info, synth

    info = build_info()
    print(f"histofast {info['version']}: CUDA compiled={info['cuda_compiled']} devices={info['cuda_devices']} "
          f"threads={info['cpu_threads']} AVX2={info['avx2']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide = out / f"synthetic-{args.size}.svs"
    if not slide.exists():
        start = time.perf_counter()
        synth.write_slide(slide, args.size, args.size, seed=args.seed, tissue_fraction=0.5)
        print(f"wrote {slide} ({args.size}×{args.size} Aperio SVS, {slide.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - start:.1f} s")
    args.slides = [os.fspath(slide)]
    args.out = os.fspath(out / "tiles")
    status = _export(args, args.slides)
    print(f"QC image: {Path(args.out) / slide.stem / 'qc.png'}")
    return status


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.run(args)


def _train(args: argparse.Namespace) -> int:
    from .config import TrainConfig, from_arguments, given_values
    from .train import describe, fit, read_checkpoint

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


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    if args.out is None:
        args.out = os.fspath(Path(args.checkpoint).parent / f"evaluate-{Path(args.data).stem}-tta{args.tta}")
    result = evaluate(args.checkpoint, args.data, tta=args.tta, out=args.out, device=args.device,
                      batch_size=args.batch_size, workers=args.workers, progress=False if args.quiet else None)
    if not result.reports:
        print("no labelled slides: predictions only", file=sys.stderr)
    print(result.table())
    for row in result.slides:
        label = f", label {row['label']}" if row["label"] else ""
        print(f"{row['slide']}: {row['predicted']} ({row['samples']} samples{label})")
    print(f"metrics.json, slides.csv and plots in {args.out}")
    return 0


def _tiling_arguments(p: argparse.ArgumentParser, stride: int | None, fmt: str) -> None:
    p.add_argument("--tile-size", type=int, default=512, metavar="PX", help="tile side in pixels (default 512)")
    p.add_argument("--stride", type=int, default=stride, metavar="PX",
                   help=f"grid step in pixels (default {stride or 'the tile size'}); < tile size overlaps")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, help="pyramid level to tile (default 0, full resolution)")
    which.add_argument("--mpp", type=float, help="target µm per pixel: nearest finer level, resampled if >5%% off")
    which.add_argument("--magnification", type=float, metavar="X", help="target magnification, e.g. 20 for 20×")
    p.add_argument("--max-white", type=float, default=0.5, metavar="F",
                   help="keep tiles whose white fraction is at most F (default 0.5)")
    p.add_argument("--hsv-lower", type=int, nargs=3, default=(0, 0, 200), metavar=("H", "S", "V"),
                   help="OpenCV HSV lower bound of 'white' (default 0 0 200)")
    p.add_argument("--hsv-upper", type=int, nargs=3, default=(180, 30, 255), metavar=("H", "S", "V"),
                   help="OpenCV HSV upper bound of 'white' (default 180 30 255)")
    p.add_argument("--format", choices=("jpg", "png", "tfrecord", "none"), default=fmt,
                   help=f"how to write kept tiles (default {fmt}); tfrecord writes shards + DALI index files")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    p.add_argument("--label", type=int, default=-1, help="class label stored in TFRecords (default -1: none)")
    p.add_argument("--augment", metavar="SPEC",
                   help='geometric augmentation of written tiles, e.g. "rot90,flip,shift=16,angle=10"')
    p.add_argument("--seed", type=int, default=0, help="augmentation seed (default 0)")
    p.add_argument("--workers", type=int, metavar="N", help="decode/encode threads (default: all cores)")
    p.add_argument("--qc", action="store_true", help="write qc.png: thumbnail with kept tiles outlined")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="histofast",
        description="Whole-slide images to tissue tiles, fast: OpenCV-exact background filtering, direct "
        "tiled-TIFF decoding, geometric augmentation in C++/CUDA.",
        epilog="Run 'histofast COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tile = commands.add_parser(
        "tile", help="export the tissue tiles of slides (JPEG/PNG files or TFRecord shards) with a manifest",
        description="Tile slides on a grid, keep tiles whose HSV white fraction is at most --max-white, and write "
        "them under OUT/<slide>/ with OUT/<slide>/manifest.csv and OUT/manifest.csv. Reruns skip finished "
        "slides and complete interrupted ones; a failing slide is reported and the others still finish "
        "(exit status 1).",
    )
    tile.add_argument("slides", nargs="+", metavar="SLIDE", help="slide or image files, or folders of them")
    tile.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    _tiling_arguments(tile, stride=None, fmt="jpg")
    tile.set_defaults(run=_tile)

    demo = commands.add_parser(
        "demo", help="generate a synthetic H&E slide, tile it, write the QC image, print tiles/s",
        description="The main job on generated data: writes OUT/synthetic-SIZE.svs (Aperio SVS) once, then runs "
        "'histofast tile' on it with --qc.",
    )
    demo.add_argument("--size", type=int, default=8192, help="slide side in pixels (default 8192)")
    demo.add_argument("--out", default="histofast-demo", metavar="DIR", help="output folder (default histofast-demo)")
    _tiling_arguments(demo, stride=256, fmt="jpg")
    demo.set_defaults(run=_demo, qc=True)

    from . import bench

    bench_parser = commands.add_parser("bench", help=bench.HELP, description=bench.DESCRIPTION,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(run=_bench)

    from . import config

    train = commands.add_parser(
        "train", help="train a model (two-level CNN or a baseline) on labelled slides",
        description="Train on a manifest CSV (path,label[,patient]), class folders or TFRecord shards. Validation "
        "is a patient-disjoint split of DATA unless --val-data is given. Writes OUT/last.pt after every epoch, "
        "OUT/best.pt, history.jsonl, steps.jsonl and curves/ROC/confusion plots. two_level_cnn trains level 1 "
        "(patches) for --patch-epochs, then level 2 (frozen patch maps) for --epochs, then end to end for "
        "--finetune-epochs.",
    )
    config.add_arguments(train)
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue the run of this last.pt exactly")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("-v", "--verbose", action="store_true", help="log every --log-interval batches and epoch")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser(
        "evaluate", help="score a checkpoint on labelled slides: tables, ROC and confusion plots, slide predictions",
        description="Cut DATA as the checkpoint's training did (no augmentation), predict, and print per-class "
        "precision, recall and AUC at patch, image and slide level (a slide's prediction is the mean of its "
        "images' or tiles' probabilities).",
    )
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt or last.pt of 'histofast train'")
    evaluate.add_argument("data", metavar="DATA", help="manifest CSV, class folders, slide file or TFRecord shards")
    evaluate.add_argument("--tta", type=int, choices=(1, 8), default=1,
                          help="8: average the 8 dihedral views (rot90 × flip) of every input (default 1)")
    evaluate.add_argument("--out", metavar="DIR", help="write metrics.json, slides.csv and plots here "
                          "(default: evaluate-<data>-tta<N> beside the checkpoint)")
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    evaluate.add_argument("--batch-size", type=int, help="default: the training run's")
    evaluate.add_argument("--workers", type=int, help="Pipeline streams (default: the training run's)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(run=_evaluate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .errors import HistofastError

    try:
        return args.run(args)
    except HistofastError as e:
        print(f"histofast {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
