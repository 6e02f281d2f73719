"""The fused scoring: white pixels counted per decoded part (from many threads) give ops.white_ratio's values
bit for bit, whatever the parts, the grid or the HSV bounds; tile_grid uses it on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import histofast
from histofast import ops, synth
from histofast.tiling.counts import WhiteCounts


def _parts(rng: np.random.Generator, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """A random partition of the image into rectangles (x, y, w, h): cuts not aligned to any cell."""
    xs = np.unique(np.r_[0, rng.integers(1, width, 5), width])
    ys = np.unique(np.r_[0, rng.integers(1, height, 4), height])
    return [(x0, y0, x1 - x0, y1 - y0) for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


@pytest.mark.parametrize("tile, stride, lower, upper", [
    (64, 64, (0, 0, 200), (180, 30, 255)),
    (64, 32, (0, 0, 200), (180, 30, 255)),
    (60, 25, (0, 0, 200), (180, 30, 255)),  # cell 5
    (32, 48, (0, 0, 200), (180, 30, 255)),  # stride past the tile: gaps between tiles
    (50, 50, (10, 20, 100), (120, 200, 250)),  # a closed hue range: the exact scalar HSV path
    (100, 100, (0, 0, 200), (180, 30, 255)),  # cells ≥ 64 wide are counted directly: 3 × 32 AVX2 + a tail of 4
    (128, 64, (5, 0, 150), (170, 60, 255)),  # wide cells, closed hue: counted by the scalar path
])
def test_counts_from_random_parts_equal_white_ratio_exactly(tile, stride, lower, upper):
    rng = np.random.default_rng(tile * 1000 + stride)
    height, width = 230, 301
    image = synth.tissue_image(height, width, seed=int(rng.integers(1000)))
    image[rng.random((height, width)) < 0.2] = rng.integers(190, 256, 3)  # white-ish noise: ratios off 0 and 1
    expected = ops.white_ratio(image, tile, stride, lower, upper)
    counts = WhiteCounts((width, height), tile, stride, lower, upper)
    parts = _parts(rng, width, height)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: counts.add(image[p[1] : p[1] + p[3], p[0] : p[0] + p[2]], p[0], p[1]), parts))
    np.testing.assert_array_equal(counts.ratio(range(expected.shape[0])), expected)
    np.testing.assert_array_equal(counts.ratio(range(1, len(expected))), expected[1:])  # any rows on their own


def test_white_counts_checks_its_arguments():
    counts = np.zeros((4, 4), np.int64)
    part = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(histofast.HistofastError, match="counts: expected a writable C-contiguous int64"):
        ops.white_counts(part, counts.astype(np.int32), 0, 0, 8)
    with pytest.raises(histofast.HistofastError, match="cell"):
        ops.white_counts(part, counts, 0, 0, 0)
    with pytest.raises(histofast.HistofastError, match="x, y: must be >= 0"):
        ops.white_counts(part, counts, -1, 0, 8)
    ops.white_counts(np.full((8, 8, 3), 255, np.uint8), counts, 28, 28, 8)  # past the last whole cell: ignored
    assert counts[3, 3] == 16 and counts.sum() == 16


def test_tile_grid_counts_while_decoding_and_equals_white_ratio_over_the_level(make_slide):
    """On the CPU the grid comes from counts taken in the decoder threads: the same float32 values as
    white_ratio over the whole level, at strides that overlap, tile and leave gaps."""
    path = make_slide(1500, 1100, seed=3, tissue_fraction=0.5)
    with histofast.open_slide(path) as slide:
        level = slide.read_level_region(0, (0, 0), slide.dimensions)
        for tile, stride in ((256, 256), (256, 128), (200, 300), (512, 100)):
            grid = histofast.tile_grid(slide, tile, stride)
            np.testing.assert_array_equal(grid.white_ratio, ops.white_ratio(level, tile, stride))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_threads_1_is_one_thread_in_all(make_slide):
    """threads=1 decodes, counts, scores and augments in the caller's thread: no decode pool, an OpenMP team of 1."""
    path = make_slide(1500, 1100, seed=3, tissue_fraction=0.5)
    code = f"""
import os, histofast
before = len(os.listdir("/proc/self/task"))  # numpy's BLAS may have started its own
with histofast.open_slide({str(path)!r}, threads=1) as slide:
    histofast.tile_grid(slide, 256, 128)
    augment = histofast.Augment(rot90=True, flip=True, max_shift=8, max_angle=10, seed=1)
    batches = list(histofast.iter_tiles(slide, 256, 128, augment=augment, out_dtype="float32", layout="NCHW"))
    assert sum(len(b.images) for b in batches) > 0
    histofast.ops.white_ratio(slide.read_level_region(0, (0, 0), (512, 512)), 64, 32, threads=1)
    print(len(os.listdir("/proc/self/task")) - before)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0"]
