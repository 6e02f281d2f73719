"""End-to-end tiles per second: the seed's OpenSlide + OpenCV recipe, the JPEG decode limit, tile_grid and
iter_tiles on one generated 16384² slide, in one process (the same as `histofast bench`; histofast/benchmark/).

    python benchmarks/tiles_per_second.py            # full run, a few minutes; JSON in .benchmarks/
    python benchmarks/tiles_per_second.py --quick    # 4096² smoke test, seconds
    python benchmarks/tiles_per_second.py --help
"""
from __future__ import annotations

import sys

from histofast.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
