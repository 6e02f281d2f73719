"""The three kernels, each in a pytest-benchmark group beside its independent reference, so the
speed-up is a ratio measured in one run (benchmarks/README.md has the method). Run:
    pytest benchmarks/ --benchmark-json=bench.json && python benchmarks/ratios.py bench.json
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from common import augment_reference, near_white_image, white_ratio_reference

from histofast import ops

SIZE, TILE, STRIDE, N = 4096, 512, 256, 64  # a 4096² region; 64 tiles of 512² for augment
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT = ((0, 0, 200), (180, 30, 255))
HUE_BOUNDED = ((10, 0, 200), (170, 30, 255))


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    return near_white_image(np.random.default_rng(0), SIZE, SIZE)


@pytest.fixture(scope="module")
def tiles() -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(1)
    origins = rng.integers(0, SIZE - TILE + 1, (N, 2))
    params = dict(rot90=rng.integers(0, 4, N), flip=rng.random(N) < 0.5, shift=rng.integers(-16, 17, (N, 2)))
    return origins, params


def mark(benchmark, role: str) -> None:
    """role: 'histofast', 'reference' (the baseline ratios are taken against) or 'limit'."""
    benchmark.extra_info["role"] = role


@pytest.mark.benchmark(group="white_ratio 4096² tile 512 stride 256")
def test_white_ratio_histofast(benchmark, region):
    mark(benchmark, "histofast")
    benchmark(ops.white_ratio, region, TILE, STRIDE, *DEFAULT)


@pytest.mark.benchmark(group="white_ratio 4096² tile 512 stride 256")
def test_white_ratio_histofast_hue_bounded(benchmark, region):
    mark(benchmark, "histofast")
    benchmark(ops.white_ratio, region, TILE, STRIDE, *HUE_BOUNDED)


@pytest.mark.benchmark(group="white_ratio 4096² tile 512 stride 256")
def test_white_ratio_opencv_reference(benchmark, region):
    mark(benchmark, "reference")
    benchmark(white_ratio_reference, region, TILE, STRIDE, *DEFAULT)


@pytest.mark.benchmark(group="rgb_to_hsv 4096²")
def test_rgb_to_hsv_histofast(benchmark, region):
    mark(benchmark, "histofast")
    benchmark(ops.rgb_to_hsv, region)


@pytest.mark.benchmark(group="rgb_to_hsv 4096²")
def test_rgb_to_hsv_opencv_reference(benchmark, region):
    mark(benchmark, "reference")
    benchmark(cv2.cvtColor, region, cv2.COLOR_RGB2HSV)


@pytest.mark.benchmark(group="augment 64×512² float32 NCHW")
@pytest.mark.parametrize("kind", ["dihedral+shift", "shift only", "angle ±30°"])
def test_augment_histofast(benchmark, region, tiles, kind):
    origins, params = tiles
    mark(benchmark, "histofast")
    kw = dict(params) if kind == "dihedral+shift" else dict(shift=params["shift"])
    if kind == "angle ±30°":
        kw["angle"] = np.random.default_rng(2).uniform(-30, 30, N)
    benchmark(ops.augment, region, origins, TILE, **kw, mean=MEAN, std=STD)


@pytest.mark.benchmark(group="augment 64×512² float32 NCHW")
def test_augment_numpy_reference(benchmark, region, tiles):
    origins, params = tiles
    mark(benchmark, "reference")
    benchmark(augment_reference, region, origins, TILE, **params, mean=MEAN, std=STD, out_dtype="float32",
              layout="NCHW")


@pytest.mark.benchmark(group="augment 64×512² float32 NCHW")
def test_augment_memory_write_limit(benchmark):
    """Writing the same 201 MB with both cores and nothing else: the floor for any augment."""
    mark(benchmark, "limit")
    out = np.empty(N * 3 * TILE * TILE, np.float32)
    halves = np.array_split(out, 2)
    with ThreadPoolExecutor(2) as pool:
        benchmark(lambda: list(pool.map(lambda h: np.copyto(h, np.float32(0.5)), halves)))


# GPU: device-only (data already there, synchronised inside the timed region) and transfer-inclusive.


@pytest.mark.gpu
@pytest.mark.benchmark(group="gpu white_ratio 4096² tile 512 stride 256")
@pytest.mark.parametrize("transfers", [False, True], ids=["device-only", "with-transfers"])
def test_white_ratio_cuda(benchmark, region, transfers):
    import torch

    mark(benchmark, "histofast")
    on_gpu = torch.from_numpy(region).cuda()

    def run():
        x = torch.from_numpy(region).cuda() if transfers else on_gpu
        r = ops.white_ratio(x, TILE, STRIDE)
        return r.cpu() if transfers else torch.cuda.synchronize()

    benchmark(run)


@pytest.mark.gpu
@pytest.mark.benchmark(group="gpu augment 64×512² float16 NCHW")
@pytest.mark.parametrize("transfers", [False, True], ids=["device-only", "with-transfers"])
def test_augment_cuda(benchmark, region, tiles, transfers):
    import torch

    origins, params = tiles
    mark(benchmark, "histofast")
    on_gpu = torch.from_numpy(region).cuda()

    def run():
        x = torch.from_numpy(region).cuda() if transfers else on_gpu
        out = ops.augment(x, origins, TILE, **params, mean=MEAN, std=STD, out_dtype="float16")
        return out.cpu() if transfers else torch.cuda.synchronize()

    benchmark(run)
