"""histofast.ops against independent references: OpenCV for HSV and inRange, numpy for geometry."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from common import (
    ANGLE_ATOL,
    EXACT_ATOL,
    TWIN_ANGLE_ATOL,
    TWIN_ATOL,
    all_colours,
    augment_reference,
    cpu_and_cuda,
    near_white_image,
    resample_reference,
    rotated_reference,
    to_device,
    to_numpy,
    triangle_reference,
    white_ratio_reference,
)

from histofast import HistofastError, ops

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def colours() -> np.ndarray:
    return all_colours()


@pytest.fixture(scope="module")
def colours_hsv(colours: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(colours, cv2.COLOR_RGB2HSV)


# ---------------------------------------------------------------- rgb_to_hsv


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_rgb_to_hsv_all_colours(colours, colours_hsv, device):
    hsv = to_numpy(ops.rgb_to_hsv(to_device(colours, device)))
    np.testing.assert_array_equal(hsv, colours_hsv)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33), (301, 257)])
def test_rgb_to_hsv_random(device, shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_numpy(ops.rgb_to_hsv(to_device(rgb, device))), cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))


def test_rgb_to_hsv_strided_rows_without_copy():
    big = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    crop = big[5:40, 10:70]  # rows strided, pixels packed
    np.testing.assert_array_equal(ops.rgb_to_hsv(crop), cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2HSV))


def test_rgb_to_hsv_writes_into_out():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = np.full((20, 30, 3), 7, np.uint8)
    assert ops.rgb_to_hsv(rgb, out=out) is out
    np.testing.assert_array_equal(out, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))


# ---------------------------------------------------------------- white_ratio

BOUNDS = [
    ((0, 0, 200), (180, 30, 255)),  # the paper's default (hue open: the SIMD path on the CPU)
    ((0, 0, 0), (180, 255, 255)),  # everything
    ((0, 255, 255), (180, 255, 255)),  # a single S, V
    ((0, 7, 3), (180, 201, 250)),  # S and V bounded on both sides
    ((10, 0, 200), (170, 30, 255)),  # hue bounded: the exact scalar path
    ((90, 40, 0), (90, 255, 128)),  # a single hue
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("lower, upper", BOUNDS)
def test_white_mask_all_colours(colours, colours_hsv, device, lower, upper):
    """tile 1, stride 1: the white ratio is the inRange mask itself, for all 2^24 colours."""
    ratio = to_numpy(ops.white_ratio(to_device(colours, device), 1, 1, lower, upper))
    np.testing.assert_array_equal(ratio == 1, cv2.inRange(colours_hsv, lower, upper) > 0)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_white_mask_random_bounds_all_colours(colours, colours_hsv, device):
    rng = np.random.default_rng(7)
    for _ in range(3):
        lo = [int(rng.integers(0, 181)), int(rng.integers(0, 256)), int(rng.integers(0, 256))]
        hi = [int(rng.integers(lo[0], 181)), int(rng.integers(lo[1], 256)), int(rng.integers(lo[2], 256))]
        lo[0] = 0 if rng.random() < 0.5 else lo[0]  # half the draws with the hue open
        hi[0] = 180 if lo[0] == 0 else hi[0]
        ratio = to_numpy(ops.white_ratio(to_device(colours, device), 1, 1, lo, hi))
        np.testing.assert_array_equal(ratio == 1, cv2.inRange(colours_hsv, tuple(lo), tuple(hi)) > 0, err_msg=f"{lo} {hi}")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "height, width, tile, stride",
    [
        (1000, 1300, 512, 256),  # the paper's overlap
        (257, 391, 64, 64),
        (200, 180, 50, 70),  # stride > tile
        (123, 457, 17, 5),  # gcd 1: one-pixel cells
        (97, 97, 97, 97),  # tile = region
        (97, 150, 97, 1),
        (64, 1000, 32, 24),
    ],
)
@pytest.mark.parametrize("lower, upper", [BOUNDS[0], BOUNDS[4]])
def test_white_ratio_matches_opencv_per_tile(device, height, width, tile, stride, lower, upper):
    region = near_white_image(np.random.default_rng(height * width + tile), height, width)
    ratio = ops.white_ratio(to_device(region, device), tile, stride, lower, upper)
    np.testing.assert_array_equal(to_numpy(ratio), white_ratio_reference(region, tile, stride, lower, upper))


def test_white_ratio_strided_region():
    big = near_white_image(np.random.default_rng(3), 300, 400)
    crop = big[10:290, 33:380]
    np.testing.assert_array_equal(
        ops.white_ratio(crop, 64, 32), white_ratio_reference(np.ascontiguousarray(crop), 64, 32, *BOUNDS[0])
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_white_ratio_poisoned_output_fully_written(device):
    region = near_white_image(np.random.default_rng(4), 300, 333)
    out = to_device(np.full((5, 6), np.nan, np.float32), device)
    ops.white_ratio(to_device(region, device), 64, 50, out=out)
    np.testing.assert_array_equal(to_numpy(out), white_ratio_reference(region, 64, 50, *BOUNDS[0]))


@pytest.mark.parametrize(
    "height, width, tile, stride",
    [(257, 391, 64, 64), (200, 180, 50, 70), (123, 457, 17, 5), (97, 97, 97, 97), (300, 333, 64, 48)],
)
def test_white_ratio_from_counts_equals_white_ratio_bit_for_bit(height, width, tile, stride):
    """The count → ratio step is white_ratio's own C++ formula: any rows, any grid, the same float32 values."""
    import math

    region = near_white_image(np.random.default_rng(height + tile), height, width)
    cell = math.gcd(tile, stride)
    counts = np.zeros((height // cell, width // cell), np.int64)
    ops.white_counts(region, counts, 0, 0, cell)
    expected = ops.white_ratio(region, tile, stride)
    np.testing.assert_array_equal(ops.white_ratio_from_counts(counts, cell, tile, stride), expected)
    for start in range(len(expected)):
        for stop in range(start, len(expected) + 1):
            got = ops.white_ratio_from_counts(counts, cell, tile, stride, range(start, stop))
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected[start:stop])


def test_white_ratio_from_counts_checks_its_arguments():
    counts = np.zeros((8, 8), np.int64)
    with pytest.raises(HistofastError, match="cell=3: must be a positive divisor of tile_size=32 and stride=16"):
        ops.white_ratio_from_counts(counts, 3, 32, 16)
    with pytest.raises(HistofastError, match="counts: expected an int64"):
        ops.white_ratio_from_counts(counts.astype(np.int32), 8, 32, 16)
    with pytest.raises(HistofastError, match=r"rows=range\(2, 5\): expected a range of step 1 within"):
        ops.white_ratio_from_counts(counts, 8, 32, 16, range(2, 5))  # 64 pixels: rows 0..2
    with pytest.raises(HistofastError, match="tile_size=128: larger than region"):
        ops.white_ratio_from_counts(counts, 8, 128, 8)
    from histofast import _C  # the binding's own bounds: no tile may reach past the counts

    with pytest.raises(HistofastError, match="reach past the"):
        _C.white_ratio_from_counts(counts, np.empty((4, 1), np.float32), 8, 32, 16, 0)
    with pytest.raises(HistofastError, match="reach past the"):
        _C.white_ratio_from_counts(counts, np.empty((1, 1), np.float32), 8, 32, 2**62, 1)


# ---------------------------------------------------------------- augment


def random_augment_case(seed: int, height: int, width: int, tile: int, n: int, max_shift: int):
    rng = np.random.default_rng(seed)
    region = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    origins = np.stack([rng.integers(0, width - tile + 1, n), rng.integers(0, height - tile + 1, n)], 1)
    params = dict(
        rot90=rng.integers(0, 4, n),
        flip=rng.random(n) < 0.5,
        shift=rng.integers(-max_shift, max_shift + 1, (n, 2)),
    )
    return region, origins, params


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("out_dtype", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(
    "height, width, tile, max_shift",
    [(300, 411, 64, 20), (61, 47, 33, 150), (40, 40, 40, 7), (5, 9, 1, 3), (128, 200, 96, 0)],
)
def test_augment_matches_numpy_recipe(device, out_dtype, layout, height, width, tile, max_shift):
    """Integer transforms: uint8 and float16 bit-exact, float32 within 1e-6 (shifts beyond the region
    reflect as np.pad does, whatever the distance)."""
    region, origins, params = random_augment_case(height + tile, height, width, tile, 24, max_shift)
    norm = dict(mean=MEAN, std=STD) if out_dtype != "uint8" else {}  # uint8 output is never normalised
    out = ops.augment(to_device(region, device), origins, tile, **params, **norm, out_dtype=out_dtype, layout=layout)
    expect = augment_reference(region, origins, tile, **params, **norm, out_dtype=out_dtype, layout=layout)
    assert str(to_numpy(out).dtype) == out_dtype and out.shape == expect.shape
    np.testing.assert_allclose(to_numpy(out).astype(np.float64), expect.astype(np.float64), rtol=0, atol=EXACT_ATOL[out_dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_augment_more_tiles_than_one_launch(device):
    """The CUDA twin carries 99 tiles' parameters per launch: 250 tiles take three launches."""
    region, origins, params = random_augment_case(22, 90, 100, 20, 250, 8)
    kw = dict(**params, mean=MEAN, std=STD, out_dtype="float16", layout="NCHW")
    out = ops.augment(to_device(region, device), origins, 20, **kw)
    np.testing.assert_array_equal(to_numpy(out), augment_reference(region, origins, 20, **kw))


def test_augment_defaults_are_identity_crops():
    region, origins, _ = random_augment_case(5, 100, 120, 32, 6, 0)
    out = ops.augment(region, origins, 32, out_dtype="uint8", layout="NHWC")
    for tile, (x, y) in zip(out, origins):
        np.testing.assert_array_equal(tile, region[y : y + 32, x : x + 32])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("out_dtype", ["float32", "float16", "uint8"])
def test_augment_angle_matches_bilinear_reference(device, out_dtype):
    region, origins, params = random_augment_case(11, 150, 170, 48, 12, 30)
    angle = np.random.default_rng(12).uniform(-180, 180, 12)
    out = to_numpy(ops.augment(to_device(region, device), origins, 48, **params, angle=angle, out_dtype=out_dtype))
    for i in range(12):
        window = rotated_reference(region, origins[i], params["shift"][i], 48, angle[i])
        view = np.rot90(window, params["rot90"][i])
        view = view[:, ::-1] if params["flip"][i] else view
        expect = view.transpose(2, 0, 1) if out_dtype == "uint8" else view.transpose(2, 0, 1) / 255
        np.testing.assert_allclose(out[i].astype(np.float64), expect, rtol=0, atol=ANGLE_ATOL[out_dtype])


def test_augment_angle_follows_opencv_rotation_convention():
    """Positive angles turn content counter-clockwise, as cv2.getRotationMatrix2D + warpAffine."""
    yy, xx = np.mgrid[0:200, 0:220]
    smooth = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 23.0), (xx + yy) % 256 * 0 + 90], -1)
    region = smooth.astype(np.uint8)
    x, y, t, angle = 60, 50, 80, 25.0
    out = ops.augment(region, [[x, y]], t, angle=[angle], out_dtype="uint8", layout="NHWC")[0]
    m = cv2.getRotationMatrix2D((x + (t - 1) / 2, y + (t - 1) / 2), angle, 1.0)
    expect = cv2.warpAffine(region, m, (220, 200), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    diff = np.abs(out.astype(int) - expect[y : y + t, x : x + t].astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 3


def test_augment_angle_90_equals_rot90():
    region, origins, _ = random_augment_case(13, 90, 100, 40, 5, 0)
    turned = ops.augment(region, origins, 40, angle=np.full(5, 90.0), out_dtype="uint8")
    np.testing.assert_array_equal(turned, ops.augment(region, origins, 40, rot90=np.ones(5, int), out_dtype="uint8"))


def test_augment_float16_rounds_like_numpy():
    """The rotated path converts every interpolated value: float16 must equal numpy's astype."""
    region, origins, params = random_augment_case(14, 120, 120, 64, 8, 10)
    angle = np.linspace(-170, 170, 8)
    f32 = ops.augment(region, origins, 64, **params, angle=angle, mean=MEAN, std=STD, out_dtype="float32")
    f16 = ops.augment(region, origins, 64, **params, angle=angle, mean=MEAN, std=STD, out_dtype="float16")
    np.testing.assert_array_equal(f16, f32.astype(np.float16))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
def test_augment_poisoned_output_fully_written(device, out_dtype):
    region, origins, params = random_augment_case(15, 80, 90, 30, 7, 5)
    out = to_device(np.full((7, 3, 30, 30), np.nan, out_dtype), device)
    ops.augment(to_device(region, device), origins, 30, **params, angle=[0, 10, 0, 0, -45, 0, 0], out_dtype=out_dtype, out=out)
    assert not np.isnan(to_numpy(out)).any()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_augment_no_tiles(device):
    """An empty batch: on the GPU its data pointer is 0, which must still count as device memory."""
    region = to_device(np.zeros((10, 10, 3), np.uint8) + 5, device)
    assert tuple(ops.augment(region, np.zeros((0, 2), int), 4).shape) == (0, 3, 4, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_augment_cpu_and_cuda_agree(out_dtype, layout):
    region, origins, params = random_augment_case(16, 700, 650, 128, 40, 200)
    kw = dict(**params, mean=MEAN, std=STD, out_dtype=out_dtype, layout=layout)
    cpu = ops.augment(region, origins, 128, **kw)
    gpu = to_numpy(ops.augment(to_device(region, "cuda"), origins, 128, **kw))
    np.testing.assert_allclose(gpu.astype(np.float64), cpu.astype(np.float64), rtol=0, atol=TWIN_ATOL[out_dtype])
    angle = np.random.default_rng(17).uniform(-90, 90, 40)
    cpu = ops.augment(region, origins, 128, angle=angle, **kw)
    gpu = to_numpy(ops.augment(to_device(region, "cuda"), origins, 128, angle=angle, **kw))
    np.testing.assert_allclose(gpu.astype(np.float64), cpu.astype(np.float64), rtol=0, atol=TWIN_ANGLE_ATOL[out_dtype])


@pytest.mark.gpu
def test_white_ratio_and_hsv_cpu_and_cuda_agree():
    region = near_white_image(np.random.default_rng(18), 2000, 1500)
    for tile, stride in [(512, 256), (100, 30), (224, 224)]:
        np.testing.assert_array_equal(
            to_numpy(ops.white_ratio(to_device(region, "cuda"), tile, stride)), ops.white_ratio(region, tile, stride)
        )
    np.testing.assert_array_equal(to_numpy(ops.rgb_to_hsv(to_device(region, "cuda"))), ops.rgb_to_hsv(region))


# ---------------------------------------------------------------- array kinds


def test_output_follows_input_torch_cpu():
    torch = pytest.importorskip("torch")
    region = torch.from_numpy(near_white_image(np.random.default_rng(19), 64, 80))
    hsv = ops.rgb_to_hsv(region)
    assert isinstance(hsv, torch.Tensor) and hsv.dtype == torch.uint8
    ratio = ops.white_ratio(region, 32, 16)
    assert isinstance(ratio, torch.Tensor) and ratio.dtype == torch.float32 and ratio.shape == (3, 4)
    batch = ops.augment(region, torch.tensor([[0, 0], [40, 20]]), 32, rot90=torch.tensor([1, 2]), out_dtype="float16")
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float16 and batch.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(batch.numpy(), ops.augment(region.numpy(), [[0, 0], [40, 20]], 32, rot90=[1, 2], out_dtype="float16"))


@pytest.mark.gpu
def test_output_follows_input_torch_cuda_on_current_stream():
    import torch

    region = near_white_image(np.random.default_rng(20), 256, 256)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = torch.from_numpy(region).cuda()
        out = ops.augment(x, [[0, 0], [100, 50]], 128, rot90=[1, 3], out_dtype="float16")
        ratio = ops.white_ratio(x, 128, 64)
    stream.synchronize()
    assert out.is_cuda and out.dtype == torch.float16 and ratio.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), ops.augment(region, [[0, 0], [100, 50]], 128, rot90=[1, 3], out_dtype="float16"))


@pytest.mark.gpu
def test_output_follows_input_cupy():
    cupy = pytest.importorskip("cupy")
    region = near_white_image(np.random.default_rng(21), 128, 160)
    ratio = ops.white_ratio(cupy.asarray(region), 64, 32)
    assert isinstance(ratio, cupy.ndarray)
    np.testing.assert_array_equal(ratio.get(), ops.white_ratio(region, 64, 32))


# ---------------------------------------------------------------- bad input

REGION = np.zeros((64, 64, 3), np.uint8)
BAD_CASES = [
    (lambda: ops.white_ratio(REGION, 0, 8), HistofastError, "tile_size=0: must be a positive integer"),
    (lambda: ops.white_ratio(REGION, 8, -1), HistofastError, "stride=-1: must be a positive integer"),
    (lambda: ops.white_ratio(REGION, 65, 8), HistofastError, "tile_size=65: larger than region (64×64"),
    (lambda: ops.white_ratio(REGION, 8.5, 8), TypeError, "tile_size=8.5: must be an integer"),
    (lambda: ops.white_ratio(REGION, 8, 8, (0, 0, 200), (181, 30, 255)), HistofastError, "upper[0]=181: H must lie in [0, 180]"),
    (lambda: ops.white_ratio(REGION, 8, 8, (0, 0, -1), (180, 30, 255)), HistofastError, "lower[2]=-1"),
    (lambda: ops.white_ratio(REGION, 8, 8, (0, 40, 0), (180, 30, 255)), HistofastError, "lower[1]=40 exceeds upper[1]=30"),
    (lambda: ops.white_ratio(REGION, 8, 8, (0, 0), (180, 30, 255)), HistofastError, "lower=(0, 0): expected 3 values"),
    (lambda: ops.white_ratio(REGION.astype(np.float32), 8, 8), TypeError, "region: expected uint8, got float32"),
    (lambda: ops.white_ratio(REGION[..., :2], 8, 8), HistofastError, "region: expected shape (H, W, 3), got (64, 64, 2)"),
    (lambda: ops.white_ratio(REGION[:, ::2], 8, 8), HistofastError, "region: pixels must be packed RGB"),
    (lambda: ops.white_ratio(REGION.transpose(1, 0, 2), 8, 8), HistofastError, "region: pixels must be packed RGB"),
    (lambda: ops.white_ratio([[1, 2, 3]], 8, 8), TypeError, "region: expected a numpy array"),
    (lambda: ops.white_ratio(REGION, 8, 8, out=np.zeros((8, 8), np.float64)), TypeError, "out: expected float32"),
    (lambda: ops.white_ratio(REGION, 8, 8, out=np.zeros((7, 8), np.float32)), HistofastError, "out: expected shape (8, 8)"),
    (lambda: ops.rgb_to_hsv(np.zeros((0, 5, 3), np.uint8)), HistofastError, "rgb: empty image"),
    (lambda: ops.rgb_to_hsv(REGION, out=np.zeros((64, 64, 3), np.uint8)[:, ::-1]), HistofastError, "out: must be C-contiguous"),
    (lambda: ops.augment(REGION, [[0, 0]], 65), HistofastError, "tile_size=65: larger than region"),
    (lambda: ops.augment(REGION, [[0, 0]], 0), HistofastError, "tile_size=0"),
    (lambda: ops.augment(REGION, [[40, 0]], 32), HistofastError, "origins[0]=(40, 0): the tile must start inside the region"),
    (lambda: ops.augment(REGION, [[0, -1]], 32), HistofastError, "origins[0]=(0, -1)"),
    (lambda: ops.augment(REGION, [0, 0], 32), HistofastError, "origins: expected shape (N, 2)"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, rot90=[4]), HistofastError, "rot90[0]=4: must be 0, 1, 2 or 3"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, rot90=[1.5]), TypeError, "rot90: expected int64 values, got float64"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, rot90=[1, 2]), HistofastError, "rot90: expected shape (1,), got (2,)"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, shift=[1, 2]), HistofastError, "shift: expected shape (N, 2)"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, angle=[np.nan]), HistofastError, "angle[0]: must be finite"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, std=(1, 0, 1)), HistofastError, "std[1]=0.000000: must be positive"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, mean=(1, 1)), HistofastError, "mean=(1, 1): expected 3 values"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out_dtype="float64"), HistofastError, "out_dtype='float64': expected one of"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, layout="CHW"), HistofastError, "layout='CHW': expected 'NCHW' or 'NHWC'"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out=np.zeros((1, 32, 32, 3), np.float32)), HistofastError, "out: expected shape (1, 3, 32, 32)"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out=np.zeros((1, 3, 32, 32), np.int32)), TypeError, "out: expected uint8, float16 or float32"),
    # issue 15, item 3: byte order and outputs overlapping the input
    (lambda: ops.white_ratio(REGION, 8, 8, out=np.empty((8, 8), ">f4")), TypeError, "out: byte order '>' is not this machine's"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out=np.empty((1, 3, 32, 32), ">f4")), TypeError, "out: byte order '>'"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out_dtype="float16", out=np.empty((1, 3, 32, 32), ">f2")), TypeError,
     "out: byte order '>'"),
    (lambda: ops.rgb_to_hsv(REGION, out=REGION), HistofastError, "out: shares memory with rgb"),
    (lambda: ops.rgb_to_hsv(REGION[1:], out=REGION[:-1]), HistofastError, "out: shares memory with rgb"),
    (lambda: ops.white_ratio(REGION, 8, 8, out=REGION.reshape(-1).view(np.float32)[:64].reshape(8, 8)), HistofastError,
     "out: shares memory with region"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out_dtype="uint8", layout="NHWC",
                         out=REGION[16:].reshape(-1)[: 32 * 32 * 3].reshape(1, 32, 32, 3)), HistofastError,
     "out: shares memory with region"),
    (lambda: ops.augment(REGION, [[0, 0]], 8, out_dtype="uint8", layout="NHWC", out=REGION[8:16, 8:16].copy()[None]), None, ""),
    # issue 15, item 14: clear messages, checked before anything is allocated
    (lambda: ops.white_ratio(REGION[..., 0], 8, 8), HistofastError, "region: expected shape (H, W, 3), got (64, 64)"),
    (lambda: ops.rgb_to_hsv(REGION[..., 0]), HistofastError, "rgb: expected shape (H, W, 3), got (64, 64)"),
    (lambda: ops.augment(REGION[..., 0], [[0, 0]], 8), HistofastError, "region: expected shape (H, W, 3), got (64, 64)"),
    (lambda: ops.augment(REGION, [[0, 0]], -5), HistofastError, "tile_size=-5: must be a positive integer"),
    (lambda: ops.augment(REGION, [[0, 0]], 2**31), HistofastError, "tile_size=2147483648: larger than region (64×64"),
    (lambda: ops.augment(REGION, [[0, 0]], 30000), HistofastError, "tile_size=30000: larger than region (64×64"),
    (lambda: ops.augment(REGION, [[0, 0]], 2**70), HistofastError, "tile_size=1180591620717411303424: out of range"),
    (lambda: ops.white_ratio(REGION, True, 8), TypeError, "tile_size=True: must be an integer, not a bool"),
    (lambda: ops.white_ratio(REGION, 8, np.bool_(True)), TypeError, "stride=True: must be an integer, not a bool"),
    (lambda: ops.augment(REGION, [[0, 0]], True), TypeError, "tile_size=True: must be an integer, not a bool"),
    (lambda: ops.white_ratio(REGION, 8, 8, (0, 0, 2**40), (180, 30, 255)), HistofastError,
     "lower[2]=1099511627776: V must lie in [0, 255] (OpenCV 8-bit HSV)"),
    (lambda: ops.white_ratio(REGION, 8, 8, (0, 0, 200), (-(2**63), 30, 255)), HistofastError, "upper[0]=-9223372036854775808: H"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out=np.zeros((1, 3, 32, 32), np.uint8)), HistofastError,
     "out: dtype uint8 contradicts out_dtype='float32'"),
    (lambda: ops.augment(REGION, [[0, 0]], 32, out_dtype="uint8", out=np.zeros((1, 3, 32, 32), np.float16)), HistofastError,
     "out: dtype float16 contradicts out_dtype='uint8'"),
    (lambda: ops.rgb_to_hsv(REGION, out=_pil(REGION)), TypeError, "out: expected a numpy array, torch tensor or CuPy array, got"),
    (lambda: ops.white_ratio(_pil(REGION[..., 0]), 8, 8), HistofastError, "region: expected shape (H, W, 3), got (64, 64)"),
]


def _pil(a: np.ndarray):
    return pytest.importorskip("PIL.Image").fromarray(a)


@pytest.mark.parametrize("call, error, fragment", BAD_CASES)
def test_bad_input_names_the_argument(call, error, fragment):
    if error is None:  # a near miss that must work
        call()
        return
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("tile_size", [-5, 2**31, 30000])
def test_augment_checks_tile_size_before_allocating(tile_size):
    """A tile larger than the region was refused only after its (N, 3, T, T) output had been allocated."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(HistofastError, match="tile_size"):
            ops.augment(REGION, np.zeros((4, 2), int), tile_size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_non_native_parameter_arrays_are_honoured():
    """Big-endian per-tile parameters are converted (they are small host arrays), not misread."""
    region, origins, params = random_augment_case(23, 80, 90, 16, 5, 6)
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in params.items()}
    expect = ops.augment(region, origins, 16, **params, out_dtype="uint8")
    got = ops.augment(region, origins.astype(">i8"), 16, **swapped, angle=np.zeros(5, ">f8"), out_dtype="uint8")
    np.testing.assert_array_equal(got, expect)


def test_overlap_refused_with_torch():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(REGION.copy())
    with pytest.raises(HistofastError, match="out: shares memory with rgb"):
        ops.rgb_to_hsv(x, out=x)
    with pytest.raises(HistofastError, match="out: shares memory with region"):
        ops.augment(x, [[0, 0]], 8, out_dtype="uint8", layout="NHWC", out=x.reshape(-1)[192:384].reshape(1, 8, 8, 3))


def test_pil_image_is_read_as_numpy():
    """A PIL image is accepted as np.asarray(image): RGB gives (H, W, 3) uint8 and a numpy result."""
    image = near_white_image(np.random.default_rng(24), 64, 80)
    pil = _pil(image)
    np.testing.assert_array_equal(ops.white_ratio(pil, 32, 16), ops.white_ratio(image, 32, 16))
    hsv = ops.rgb_to_hsv(pil)
    assert isinstance(hsv, np.ndarray)
    np.testing.assert_array_equal(hsv, ops.rgb_to_hsv(image))
    np.testing.assert_array_equal(ops.augment(pil, [[3, 4]], 16, rot90=[1]), ops.augment(image, [[3, 4]], 16, rot90=[1]))


class _FakeCudaArray:
    """Exposes only __cuda_array_interface__: a NULL data pointer with a non-empty shape."""

    def __init__(self, shape: tuple[int, ...], typestr: str = "|u1") -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False), "version": 3}


def test_c_refuses_null_cuda_array_interface():
    """Refused before any CUDA call, so no GPU is needed."""
    from histofast import _C

    with pytest.raises(HistofastError, match="rgb: __cuda_array_interface__ has a NULL data pointer but shape"):
        _C.rgb_to_hsv(_FakeCudaArray((4, 4, 3)), _FakeCudaArray((4, 4, 3)), 0)
    with pytest.raises(HistofastError, match="region: __cuda_array_interface__ has a NULL data pointer"):
        _C.white_ratio(_FakeCudaArray((4, 4, 3)), _FakeCudaArray((1, 1), "<f4"), 4, 4, (0, 0, 200), (180, 30, 255), 0)
    with pytest.raises(HistofastError, match="out: __cuda_array_interface__ has a NULL data pointer"):
        _C.augment(REGION, _FakeCudaArray((1, 3, 8, 8), "<f4"), 8, np.zeros((1, 2), np.int64), np.zeros(1, np.int64),
                   np.zeros(1, bool), np.zeros((1, 2), np.int64), np.zeros(1), (0, 0, 0), (1, 1, 1), True, 0)


def test_errors_are_value_errors():
    assert issubclass(HistofastError, ValueError)


def test_read_only_output_rejected():
    out = np.zeros((8, 8), np.float32)
    out.flags.writeable = False
    with pytest.raises((HistofastError, ValueError, BufferError)):
        ops.white_ratio(REGION, 8, 8, out=out)


def test_augment_refuses_a_normalisation_uint8_output_would_ignore():
    """Issue 15, item 14: mean/std with out_dtype='uint8' were silently ignored."""
    with pytest.raises(HistofastError, match="uint8 output is never normalised"):
        ops.augment(REGION, np.zeros((1, 2), int), 8, mean=(0.5, 0.5, 0.5), out_dtype="uint8")
    ops.augment(REGION, np.zeros((1, 2), int), 8, mean=(0, 0, 0), std=(1, 1, 1), out_dtype="uint8")  # the defaults



# ---------------------------------------------------------------- the door itself


def test_docstring_examples_run():
    """Every public op's docstring example (``Examples:``) runs as written."""
    import doctest

    import histofast.ops

    result = doctest.testmod(histofast.ops, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 30, result
    missing = [name for name in histofast.ops.__all__ if callable(getattr(histofast.ops, name))
               and ">>>" not in (getattr(histofast.ops, name).__doc__ or "")]
    assert not missing, f"public ops without an example: {missing}"


def test_check_hsv_bounds_is_one_plain_function():
    """Issue 22: one check of HSV bounds, whatever the container, and the same messages everywhere."""
    assert ops.check_hsv_bounds([0, np.int64(0), 200], (180, 30, 255)) == ((0, 0, 200), (180, 30, 255))
    assert not hasattr(ops.check_hsv_bounds, "__wrapped__")
    for lower, upper, message in [
        ((0, 0, 300), (180, 30, 255), "lower[2]=300: V must lie in [0, 255] (OpenCV 8-bit HSV)"),
        ((5, 0, 0), (3, 30, 255), "lower[0]=5 exceeds upper[0]=3"),
        ([0, 0], (180, 30, 255), "lower=[0, 0]: expected 3 values, one per channel"),
    ]:
        with pytest.raises(HistofastError) as info:
            ops.check_hsv_bounds(lower, upper)
        assert str(info.value) == message
    with pytest.raises(TypeError, match=r"upper=\(1.5, 2, 3\): expected 3 numbers"):
        ops.check_hsv_bounds((0, 0, 0), (1.5, 2, 3))


@pytest.mark.parametrize("mean, std, message", [
    ((0, float("nan"), 0), (1, 1, 1), "mean[1]: must be finite"),
    ((0, 0, 1e300), (1, 1, 1), "mean[2]: must be finite"),  # past float32: inf in the kernel
    ((0, 0, 0), (1, 1, -2), "std[2]=-2.000000: must be positive"),
    ((0, 0, 0), (float("inf"), 1, 1), "std[0]=inf: must be positive"),
    ((0, 0, 0), (1, 1e-50, 1), "std[1]=0.000000: must be positive"),  # 0 in float32
])
def test_check_batch_format_is_the_one_check_of_mean_and_std(mean, std, message):
    with pytest.raises(HistofastError) as info:
        ops.check_batch_format("float32", "NCHW", mean, std)
    assert str(info.value) == message
    with pytest.raises(HistofastError) as info:  # augment checks them with it, before reading a pixel
        ops.augment(REGION, [[0, 0]], 8, mean=mean, std=std)
    assert str(info.value) == message


# ---------------------------------------------------------------- triangle_taps, resample


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("scale", [2.0, 4.0, 1.3, 3.7, 1.06, 0.7])
def test_resample_equals_its_integer_formula_and_the_float_filter(device, scale):
    rng = np.random.default_rng(int(scale * 100))
    region = rng.integers(0, 256, (301, 357, 3), dtype=np.uint8)
    width, height = (int(357 / scale), int(301 / scale)) if scale > 1 else (400, 350)
    x_taps, y_taps = ops.triangle_taps(0, width, scale, 357), ops.triangle_taps(0, height, scale, 301)
    got = to_numpy(ops.resample(to_device(region, device), x_taps, y_taps))
    np.testing.assert_array_equal(got, resample_reference(region, x_taps, y_taps))  # bit for bit, either device
    # the fixed-point weights and the 8 fraction bits kept between the passes: within one level of float64
    assert np.abs(got.astype(int) - triangle_reference(region, scale, width, height)).max() <= 1


@pytest.mark.parametrize("scale", [2.0, 2.5, 3.3])
def test_triangle_taps_are_slices_of_the_whole_axis_and_keep_flat_colours(scale):
    whole = ops.triangle_taps(0, int(1000 / scale), scale, 1000)
    assert (whole.weights >= 0).all() and (whole.weights.sum(1) == ops.RESAMPLE_ONE).all()
    assert (np.diff(whole.first) >= 0).all() and whole.span[0] >= 0 and whole.span[1] <= 1000
    part = ops.triangle_taps(17, 40, scale, 1000)
    np.testing.assert_array_equal(part.first, whole[17:57].first)
    np.testing.assert_array_equal(part.weights[:, : whole.weights.shape[1]], whole[17:57].weights)
    flat = np.full((60, 1000, 3), (13, 200, 255), np.uint8)
    out = ops.resample(flat, whole, ops.triangle_taps(0, int(60 / scale), scale, 60))
    assert (out == (13, 200, 255)).all()


def test_resample_pieces_equal_one_call():
    region = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    x_taps, y_taps = ops.triangle_taps(0, 120, 2.5, 300), ops.triangle_taps(0, 80, 2.5, 200)
    whole = ops.resample(region, x_taps, y_taps)
    for (u0, u1), (v0, v1) in [((0, 7), (0, 80)), ((7, 120), (33, 34)), ((50, 90), (10, 70))]:
        (x0, x1), (y0, y1) = x_taps[u0:u1].span, y_taps[v0:v1].span
        piece = ops.resample(region[y0:y1, x0:x1], x_taps[u0:u1].shifted(x0), y_taps[v0:v1].shifted(y0))
        np.testing.assert_array_equal(piece, whole[v0:v1, u0:u1])


def test_resample_bad_arguments():
    region = np.zeros((10, 10, 3), np.uint8)
    good = ops.triangle_taps(0, 5, 2.0, 10)
    with pytest.raises(HistofastError, match="sum to 16384"):
        ops.Taps([0, 2], [[8192, 8191], [8192, 8192]])
    with pytest.raises(HistofastError, match="never decrease"):
        ops.Taps([2, 0], [[16384], [16384]])
    with pytest.raises(HistofastError, match="weights must be"):
        ops.Taps([0, 1], [[16384]])
    with pytest.raises(TypeError, match="x_taps: expected ops.Taps"):
        ops.resample(region, (good.first, good.weights), good)
    with pytest.raises(HistofastError, match="y_taps: first.*inside the image"):
        ops.resample(region, good, ops.triangle_taps(0, 5, 2.0, 10).shifted(-1))
    with pytest.raises(HistofastError, match="out: expected shape"):
        ops.resample(region, good, good, out=np.empty((5, 4, 3), np.uint8))
    with pytest.raises(HistofastError, match="scale=0"):
        ops.triangle_taps(0, 5, 0, 10)
    with pytest.raises(HistofastError, match="past the input"):
        ops.triangle_taps(0, 8, 2.0, 10)
