"""``histofast demo``: the main job on generated data: write a synthetic slide once, tile it, write its QC image."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from .common import add_tiling_arguments, export


def add_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="generate a synthetic H&E slide, tile it, write the QC image, print tiles/s",
        description="The main job on generated data: writes OUT/synthetic-SIZE.svs (Aperio SVS) once, then runs "
        "'histofast tile' on it with --qc into OUT/tiles, by default at stride 256 (overlapping 512-pixel tiles: the "
        "paper's training grid).",
    )
    demo.add_argument("--size", type=int, default=8192, help="slide side in pixels (default 8192)")
    demo.add_argument("--out", metavar="DIR",
                      help="output folder (default: histofast/demo in the user's cache folder, $XDG_CACHE_HOME "
                           "or ~/.cache; the system temp folder if that is not writable)")
    add_tiling_arguments(demo, fmt="jpg")
    demo.set_defaults(run=run, qc=True, stride=256)  # the demo's workload, not a default of the stride setting


def run(args: argparse.Namespace) -> int:
    from .. import synth
    from ..build import build_info
    from ..utils.paths import writable_cache_dir

    info = build_info()
    print(f"histofast {info['version']}: CUDA compiled={info['cuda_compiled']} devices={info['cuda_devices']} "
          f"threads={info['cpu_threads']} AVX2={info['avx2']}")
    out = Path(args.out) if args.out else writable_cache_dir("demo")
    out.mkdir(parents=True, exist_ok=True)
    slide = out / f"synthetic-{args.size}.svs"
    if not slide.exists():
        start = time.perf_counter()
        synth.write_slide(slide, args.size, args.size, seed=args.seed, tissue_fraction=0.5)
        print(f"wrote {slide} ({args.size}×{args.size} Aperio SVS, {slide.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - start:.1f} s")
    args.slides = [os.fspath(slide)]
    args.out = os.fspath(out / "tiles")
    status = export(args, args.slides)
    print(f"QC image: {Path(args.out) / slide.stem / 'qc.png'}")
    return status
