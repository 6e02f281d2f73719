"""The `histofast` command. `histofast demo` runs the kernels on a generated image and prints rates."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    from . import Augment, build_info, ops, synth

    info = build_info()
    print(f"histofast {info['version']}: CUDA compiled={info['cuda_compiled']} devices={info['cuda_devices']} "
          f"OpenMP threads={info['cpu_threads']} AVX2={info['avx2']}")
    image = synth.tissue_image(args.size, args.size, seed=args.seed)
    start = time.perf_counter()
    ratio = ops.white_ratio(image, args.tile_size, args.stride)
    grid_s = time.perf_counter() - start
    keep = ratio <= args.max_white
    rows, cols = np.nonzero(keep)
    origins = np.stack([cols * args.stride, rows * args.stride], 1)
    print(f"image {args.size}×{args.size}: {keep.sum()} of {keep.size} tiles of {args.tile_size} at stride "
          f"{args.stride} are tissue (white ≤ {args.max_white}); white ratio in {grid_s * 1e3:.1f} ms")
    aug = Augment(rot90=True, flip=True, max_shift=16, seed=args.seed)
    start = time.perf_counter()
    batch = aug.apply(image, origins, args.tile_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    aug_s = time.perf_counter() - start
    print(f"augmented batch {tuple(batch.shape)} {batch.dtype} in {aug_s * 1e3:.1f} ms: "
          f"{len(origins) / max(grid_s + aug_s, 1e-9):,.0f} tiles/s end to end")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="histofast",
        description="Histopathology slides to GPU-ready training batches: OpenCV-exact tissue filtering "
        "and geometric augmentation in C++/CUDA.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="generate an H&E-like image, filter its tiles, augment them, print rates")
    demo.add_argument("--size", type=int, default=4096, help="image side in pixels (default 4096)")
    demo.add_argument("--tile-size", type=int, default=512, help="tile side in pixels (default 512)")
    demo.add_argument("--stride", type=int, default=256, help="grid stride in pixels (default 256)")
    demo.add_argument("--max-white", type=float, default=0.5, help="keep tiles whose white fraction is at most this")
    demo.add_argument("--seed", type=int, default=0, help="image and augmentation seed")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
