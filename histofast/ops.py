"""The one door into histofast's compiled kernels (``histofast._C``).

Each op takes a numpy array, a torch tensor (CPU or CUDA) or a CuPy array, runs on the device the
data lives on (CUDA ops on the caller's current stream, without synchronising; only white_ratio, on a
device without memory pools, waits for the stream to free its scratch memory), and returns the same
kind of array on the same device. Images are uint8 (H, W, 3) RGB in level pixels; rows may be
strided (a crop of a larger array), pixels must be packed. Numpy array-likes (a PIL RGB image) are read
as ``np.asarray(x)``. An ``out`` must be an array in the machine's byte order that shares no memory
with the input; every argument is checked before anything is allocated.

The arguments are checked here, once, with the messages users see (``check_hsv_bounds`` and
``check_batch_format`` are public: settings are checked with them before any pixel is read); ``_C``
checks only what protects memory (dtypes, shapes, strides, devices, overlap, bounds). The array
marshalling lives in ``histofast._arrays``."""
from __future__ import annotations

import math
import operator
import struct
from typing import Any, Sequence

import numpy as np

from . import _C
from ._arrays import (
    Kind,
    as_input,
    check_out,
    dtype_name,
    for_c,
    host,
    image_shape,
    integer,
    thread_count,
    triple,
)
from .errors import HistofastError

__all__ = [
    # constants
    "DEFAULT_HSV_LOWER", "DEFAULT_HSV_UPPER", "IMAGENET_MEAN", "IMAGENET_STD", "OUT_DTYPES", "LAYOUTS", "HSV_TOP",
    "STRICT_JPEG", "RESAMPLE_ONE",
    # validators
    "check_hsv_bounds", "check_batch_format",
    # ops
    "rgb_to_hsv", "grid_shape", "white_ratio", "white_counts", "white_ratio_from_counts", "augment",
    "Taps", "triangle_taps", "resample", "decode_jpeg", "decode_jpegs_counting_white",
]

DEFAULT_HSV_LOWER = (0, 0, 200)
DEFAULT_HSV_UPPER = (180, 30, 255)
# torchvision's ImageNet normalisation (units of pixel / 255): the ``mean``/``std`` of pretrained models' inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUT_DTYPES = ("float32", "float16", "uint8")
LAYOUTS = ("NCHW", "NHWC")
HSV_TOP = (180, 255, 255)  # the largest H, S, V of OpenCV's 8-bit HSV
# The fast path's JPEG decoder, decided here once: libjpeg-turbo in _C, strict (every libjpeg warning raises),
# in a build that found the libjpeg headers; else imagecodecs' libjpeg-turbo: the same pixels, but corrupt data
# that libjpeg only warns of decode (repaired) instead of raising. ``build_info()["jpeg"]`` says which.
STRICT_JPEG: bool = hasattr(_C, "jpeg_decode")


# ---------------------------------------------------------------- validators


def check_hsv_bounds(
    lower: Sequence[Any], upper: Sequence[Any]
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``lower``, ``upper`` as int triples within OpenCV's 8-bit HSV (H 0–180, S and V 0–255), lower ≤ upper
    per channel: the check of every op that takes HSV bounds (and of the grid settings that hold them).

    Examples:
        >>> from histofast import ops
        >>> ops.check_hsv_bounds([0, 0, 200], (180, 30, 255))
        ((0, 0, 200), (180, 30, 255))
        >>> ops.check_hsv_bounds((0, 0, 300), (180, 30, 255))
        Traceback (most recent call last):
            ...
        histofast.errors.HistofastError: lower[2]=300: V must lie in [0, 255] (OpenCV 8-bit HSV)
    """
    lower, upper = triple(lower, "lower", operator.index), triple(upper, "upper", operator.index)
    top = HSV_TOP
    if (0 <= lower[0] <= upper[0] <= top[0] and 0 <= lower[1] <= upper[1] <= top[1]
            and 0 <= lower[2] <= upper[2] <= top[2]):
        return lower, upper  # the usual case, in one test; else the first fault, named:
    for c in range(3):
        for name, b in (("lower", lower), ("upper", upper)):
            if not 0 <= b[c] <= top[c]:
                raise HistofastError(f"{name}[{c}]={b[c]}: {'HSV'[c]} must lie in [0, {top[c]}] (OpenCV 8-bit HSV)")
        if lower[c] > upper[c]:
            raise HistofastError(f"lower[{c}]={lower[c]} exceeds upper[{c}]={upper[c]}")
    return lower, upper


def _float32(value: float) -> float:
    """``value`` rounded to float32, as ``_C`` receives it (±inf past float32's range)."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def check_batch_format(
    out_dtype: str, layout: str, mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Check ``augment``'s output arguments (before any pixels are read); returns (mean, std) as float triples.

    Mean and std must be finite and std positive as the float32 values the kernels use.

    Examples:
        >>> from histofast import ops
        >>> ops.check_batch_format("float16", "NHWC", ops.IMAGENET_MEAN, [0.229, 0.224, 0.225])
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        >>> ops.check_batch_format("float32", "NCHW", (0, 0, 0), (1, 0, 1))
        Traceback (most recent call last):
            ...
        histofast.errors.HistofastError: std[1]=0.000000: must be positive
    """
    if out_dtype not in OUT_DTYPES:
        raise HistofastError(f"out_dtype={out_dtype!r}: expected one of {', '.join(OUT_DTYPES)}")
    if layout not in LAYOUTS:
        raise HistofastError(f"layout={layout!r}: expected 'NCHW' or 'NHWC'")
    mean, std = triple(mean, "mean", float), triple(std, "std", float)
    if out_dtype == "uint8" and (mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0)):
        raise HistofastError(f"mean={mean}, std={std} with out_dtype='uint8': uint8 output is never normalised; "
                             "pass out_dtype='float32' or 'float16' to normalise, or leave mean and std out")
    for c in range(3):
        if not math.isfinite(_float32(mean[c])):
            raise HistofastError(f"mean[{c}]: must be finite")
        s = _float32(std[c])
        if not (math.isfinite(s) and s > 0):
            raise HistofastError(f"std[{c}]={s:.6f}: must be positive")
    return mean, std


# ---------------------------------------------------------------- ops


def rgb_to_hsv(rgb: Any, *, out: Any = None) -> Any:
    """RGB → HSV in OpenCV's 8-bit convention (H 0–179, S and V 0–255).

    Bit-identical to ``cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)``.

    Args:
        rgb: uint8 (H, W, 3).
        out: optional uint8 (H, W, 3) C-contiguous output of the same kind and device.
    Returns:
        uint8 (H, W, 3) HSV, the same kind of array as ``rgb``.

    Examples:
        >>> import numpy as np
        >>> from histofast import ops
        >>> rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
        >>> hsv = ops.rgb_to_hsv(rgb)
        >>> hsv.shape, hsv.dtype
        ((4, 5, 3), dtype('uint8'))
        >>> ops.rgb_to_hsv(np.array([[[255, 0, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)).tolist()
        [[[0, 255, 255], [120, 255, 255], [0, 0, 255]]]
    """
    rgb, kind = as_input(rgb, "rgb")
    height, width = image_shape(rgb, "rgb")
    out = kind.empty((height, width, 3), "uint8") if out is None else check_out(out, kind)
    _C.rgb_to_hsv(for_c(rgb), for_c(out), kind.stream())
    return out


def grid_shape(height: int, width: int, tile_size: int, stride: int) -> tuple[int, int]:
    """(rows, cols) of the tile grid ``white_ratio`` computes over a height×width region (pixels).

    Raises ``HistofastError`` for the values ``white_ratio`` rejects (tile_size or stride not
    positive, tile larger than the region).

    Examples:
        >>> from histofast import ops
        >>> ops.grid_shape(1000, 800, 256, 128)  # (1000 - 256) // 128 + 1, (800 - 256) // 128 + 1
        (6, 5)
    """
    return tuple(_C.grid_shape(integer(height, "height"), integer(width, "width"), integer(tile_size, "tile_size"),
                               integer(stride, "stride")))


def white_ratio(
    region: Any,
    tile_size: int,
    stride: int,
    lower: Sequence[int] = DEFAULT_HSV_LOWER,
    upper: Sequence[int] = DEFAULT_HSV_UPPER,
    *,
    out: Any = None,
    threads: int | None = None,
) -> Any:
    """Fraction of each grid tile's pixels whose HSV lies in [lower, upper] (inclusive, cv2.inRange).

    The grid has its origin at (0, 0) and only whole tiles: ``rows = (H - tile_size) // stride + 1``,
    likewise ``cols``. Counts are exact; cost is one pass over the region whatever the overlap.

    Args:
        region: uint8 (H, W, 3) RGB, level pixels.
        tile_size, stride: level pixels, positive; ``tile_size`` ≤ H and W.
        lower, upper: OpenCV 8-bit HSV bounds (H 0–180, S and V 0–255); default: white background.
        out: optional float32 (rows, cols) output of the same kind and device.
        threads: CPU threads (OpenMP) for this call; None: OpenMP's default (``OMP_NUM_THREADS`` or every core).
    Returns:
        float32 (rows, cols): entry [i, j] is the tile at level pixels (x, y) = (j·stride, i·stride).

    Examples:
        >>> import numpy as np
        >>> from histofast import ops
        >>> region = np.full((64, 96, 3), 255, np.uint8)  # white background ...
        >>> region[:32, :48] = (200, 60, 90)  # ... and tissue at the top left
        >>> ops.white_ratio(region, 32, 32).tolist()
        [[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]]
        >>> ops.white_ratio(region, 64, 16).shape
        (1, 3)
    """
    region, kind = as_input(region, "region")
    height, width = image_shape(region, "region")
    tile_size, stride = integer(tile_size, "tile_size"), integer(stride, "stride")
    lower, upper = check_hsv_bounds(lower, upper)
    rows_cols = grid_shape(height, width, tile_size, stride)
    out = kind.empty(rows_cols, "float32") if out is None else check_out(out, kind)
    _C.white_ratio(for_c(region), for_c(out), tile_size, stride, lower, upper, kind.stream(), thread_count(threads))
    return out


def white_counts(part: np.ndarray, counts: np.ndarray, x: int, y: int, cell: int,
                 hsv_lower: Sequence[int] = DEFAULT_HSV_LOWER, hsv_upper: Sequence[int] = DEFAULT_HSV_UPPER) -> None:
    """Add the white pixels of ``part`` to the cell counts of a grid (host only, safe from many threads).

    The fused half of ``white_ratio``: a decoder thread counts what it just decoded, while it is in cache;
    ``white_ratio_from_counts`` then gives the grid's ratios.

    Args:
        part: uint8 (H, W, 3), the view's pixels at (x, y); rows may be strided, pixels packed.
        counts: int64 (cells_y, cells_x), C-contiguous: white pixels per cell of side ``cell`` over the view,
            added to atomically. Pixels past the last whole cell are not counted.
        x, y: where ``part`` lies in the view, pixels.
        cell: the cells' side, pixels (gcd(tile_size, stride) for a grid).
        hsv_lower, hsv_upper: as for ``white_ratio``.

    Examples:
        >>> import numpy as np
        >>> from histofast import ops
        >>> view = np.full((64, 96, 3), 255, np.uint8)
        >>> view[:32, :48] = (200, 60, 90)
        >>> counts = np.zeros((2, 3), np.int64)  # cells of 32 pixels over the 64×96 view
        >>> ops.white_counts(view[:, :40], counts, 0, 0, 32)  # two parts, as two decoder threads would
        >>> ops.white_counts(view[:, 40:], counts, 40, 0, 32)
        >>> counts.tolist()
        [[0, 512, 1024], [1024, 1024, 1024]]
    """
    lower, upper = check_hsv_bounds(hsv_lower, hsv_upper)
    _C.white_counts(part, counts, integer(x, "x"), integer(y, "y"), integer(cell, "cell"), lower, upper)


def white_ratio_from_counts(counts: np.ndarray, cell: int, tile_size: int, stride: int,
                            rows: range | None = None) -> np.ndarray:
    """``white_ratio`` of tile rows ``rows`` from the cell counts ``white_counts`` filled (host only).

    The same float32 values as ``white_ratio`` over the counted view, bit for bit (the same C++ formula:
    each tile's count from the prefix sums of the cells, divided by tile_size² once). The grid is the one
    over the counts' area, ``counts.shape[0]·cell`` × ``counts.shape[1]·cell`` pixels.

    Args:
        counts: int64 (cells_y, cells_x), C-contiguous; every pixel of the rows' tiles counted.
        cell: the cells' side, pixels; it must divide ``tile_size`` and ``stride`` (gcd(tile_size, stride)).
        tile_size, stride: the grid, pixels.
        rows: tile rows (a range of step 1), default every row of the grid.
    Returns:
        float32 (len(rows), cols).

    Examples:
        >>> import numpy as np
        >>> from histofast import ops
        >>> view = np.random.default_rng(0).integers(190, 256, (80, 100, 3), dtype=np.uint8)
        >>> counts = np.zeros((80 // 10, 100 // 10), np.int64)  # cells of gcd(40, 30) = 10
        >>> ops.white_counts(view, counts, 0, 0, 10)
        >>> ratio = ops.white_ratio_from_counts(counts, 10, 40, 30)
        >>> ratio.shape, ratio.dtype
        ((2, 3), dtype('float32'))
        >>> np.array_equal(ratio, ops.white_ratio(view, 40, 30))
        True
        >>> np.array_equal(ops.white_ratio_from_counts(counts, 10, 40, 30, range(1, 2)), ratio[1:])
        True
    """
    if not (isinstance(counts, np.ndarray) and counts.dtype == np.int64 and counts.ndim == 2):
        raise HistofastError(f"counts: expected an int64 (cells_y, cells_x) numpy array, got {type(counts).__name__} "
                             f"of {getattr(counts, 'dtype', '?')} {getattr(counts, 'shape', '')}")
    cell, tile_size, stride = integer(cell, "cell"), integer(tile_size, "tile_size"), integer(stride, "stride")
    if cell < 1 or tile_size % cell or stride % cell:
        raise HistofastError(f"cell={cell}: must be a positive divisor of tile_size={tile_size} and stride={stride}")
    n_rows, cols = grid_shape(counts.shape[0] * cell, counts.shape[1] * cell, tile_size, stride)
    rows = range(n_rows) if rows is None else rows
    if not isinstance(rows, range) or rows.step != 1 or (rows and not 0 <= rows.start <= rows.stop <= n_rows):
        raise HistofastError(f"rows={rows!r}: expected a range of step 1 within the grid's range(0, {n_rows})")
    out = np.empty((len(rows), cols), np.float32)
    _C.white_ratio_from_counts(np.ascontiguousarray(counts), out, cell, tile_size, stride, rows.start if rows else 0)
    return out


def augment(
    region: Any,
    origins: Any,
    tile_size: int,
    *,
    rot90: Any = None,
    flip: Any = None,
    shift: Any = None,
    angle: Any = None,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    out_dtype: str = "float32",
    layout: str = "NCHW",
    out: Any = None,
    threads: int | None = None,
) -> Any:
    """Cut, transform and normalise N tiles of a region in one pass per tile.

    ``out[i] = normalize(D_i(window_i))``: window_i is the tile_size² window whose top-left corner is
    ``origins[i] + shift[i]`` (pixels outside the region read as ``np.pad(region, ..., mode="reflect")``),
    optionally rotated by ``angle[i]`` degrees counter-clockwise about its centre (bilinear, sampling
    the reflect-padded region, so real context fills the corners); D_i is ``np.rot90(·, rot90[i])``
    then a left-right flip where ``flip[i]``. ``normalize(x) = (x / 255 - mean) / std`` per channel in
    float32; uint8 output skips it (and rounds interpolated values).

    Args:
        region: uint8 (H, W, 3) RGB, level pixels.
        origins: int (N, 2) of (x, y) top-left corners, level pixels, each tile inside the region.
        tile_size: level pixels, ≤ H and W.
        rot90: int (N,) counter-clockwise quarter turns 0..3; None: 0 for every tile.
        flip: bool (N,); None: no flips.
        shift: int (N, 2) of (dx, dy) pixels; None: no shift.
        angle: float (N,) degrees; None or 0: no interpolation (bit-exact integer transforms).
        mean, std: per channel, in units of x / 255.
        out_dtype: "float32", "float16" or "uint8".
        layout: "NCHW" → (N, 3, T, T) or "NHWC" → (N, T, T, 3).
        out: optional preallocated output of that shape and of dtype ``out_dtype``, same kind and device as
            region, not overlapping it.
        threads: CPU threads (OpenMP) for this call; None: OpenMP's default (``OMP_NUM_THREADS`` or every core).
    Returns:
        The batch, the same kind of array as ``region`` on its device.

    Examples:
        >>> import numpy as np
        >>> from histofast import ops
        >>> region = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        >>> batch = ops.augment(region, [[0, 0], [16, 8]], 32, rot90=[1, 0], mean=ops.IMAGENET_MEAN,
        ...                     std=ops.IMAGENET_STD)
        >>> batch.shape, batch.dtype
        ((2, 3, 32, 32), dtype('float32'))
        >>> tiles = ops.augment(region, [[16, 8]], 32, rot90=[1], flip=[True], out_dtype="uint8", layout="NHWC")
        >>> np.array_equal(tiles[0], np.fliplr(np.rot90(region[8:40, 16:48], 1)))
        True
    """
    region, kind = as_input(region, "region")
    height, width = image_shape(region, "region")
    tile_size = integer(tile_size, "tile_size")
    grid_shape(height, width, tile_size, 1)  # 0 < tile_size ≤ H, W: checked before anything is allocated
    mean, std = check_batch_format(out_dtype, layout, mean, std)
    if out is not None:
        check_out(out, kind)
        got = dtype_name(out)
        if got not in OUT_DTYPES:
            raise TypeError(f"out: expected uint8, float16 or float32, got {got}")
        if got != out_dtype:
            raise HistofastError(f"out: dtype {got} contradicts out_dtype={out_dtype!r} (pass out_dtype={got!r})")
    origins = host(origins, "origins", np.int64, (2,))
    n = len(origins)
    rot90 = np.zeros(n, np.int64) if rot90 is None else host(rot90, "rot90", np.int64)
    flip = np.zeros(n, np.bool_) if flip is None else host(flip, "flip", np.bool_)
    shift = np.zeros((n, 2), np.int64) if shift is None else host(shift, "shift", np.int64, (2,))
    angle = np.zeros(n, np.float64) if angle is None else host(angle, "angle", np.float64)
    if out is None:
        shape = (n, 3, tile_size, tile_size) if layout == "NCHW" else (n, tile_size, tile_size, 3)
        out = kind.empty(shape, out_dtype)
    _C.augment(
        for_c(region), for_c(out), tile_size, origins, rot90, flip, shift, angle,
        mean, std, layout == "NCHW", kind.stream(), thread_count(threads),
    )
    return out


RESAMPLE_ONE = 1 << 14  # the fixed-point 1.0 of resample's weights (resample.h's kWeightOne)


class Taps:
    """One axis of ``resample``'s filter: output pixel i reads input pixels ``first[i] .. first[i] + taps − 1``
    with integer ``weights[i]``, checked once, here (non-decreasing ``first``; each row of weights
    non-negative, summing to ``RESAMPLE_ONE``): a slice or a shift of checked taps is not checked again.

    Args:
        first: int (n,), input pixels.
        weights: int (n, taps).

    Examples:
        >>> from histofast import ops
        >>> taps = ops.Taps([0, 2], [[8192, 8192], [8192, 8192]])  # 2× down by pairs
        >>> len(taps), taps[1:].first.tolist(), taps.shifted(-3).first.tolist()
        (2, [2], [3, 5])
    """

    __slots__ = ("first", "weights")

    def __init__(self, first: Any, weights: Any) -> None:
        tail = tuple(int(d) for d in (weights.shape if hasattr(weights, "shape") else np.shape(weights))[1:])
        first, weights = host(first, "taps first", np.int64), host(weights, "taps weights", np.int64, tail)
        if weights.ndim != 2 or len(weights) != len(first) or not len(first) or not weights.shape[1]:
            raise HistofastError(f"taps: weights must be (n, taps) for first (n,), n and taps >= 1; got first "
                                 f"{first.shape}, weights {weights.shape}")
        if (np.diff(first) < 0).any():
            raise HistofastError("taps: first must never decrease")
        if (weights < 0).any() or (weights.sum(1) != RESAMPLE_ONE).any():
            raise HistofastError(f"taps: each row of weights must be non-negative and sum to {RESAMPLE_ONE} "
                                 "(ops.RESAMPLE_ONE)")
        self.first, self.weights = first, weights.astype(np.int32)

    @classmethod
    def _checked(cls, first: np.ndarray, weights: np.ndarray) -> "Taps":
        taps = object.__new__(cls)
        taps.first, taps.weights = first, weights
        return taps

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, outputs: slice) -> "Taps":
        """The taps of a run of output pixels (a slice of step 1)."""
        if not isinstance(outputs, slice) or outputs.step not in (None, 1):
            raise HistofastError(f"taps[{outputs!r}]: only slices of step 1")
        return Taps._checked(self.first[outputs], self.weights[outputs])

    def shifted(self, by: int) -> "Taps":
        """The same taps for an input that starts ``by`` pixels later (``first − by``)."""
        return Taps._checked(self.first - integer(by, "by"), self.weights)

    @property
    def span(self) -> tuple[int, int]:
        """The input pixels the taps read: ``(first[0], first[-1] + taps)``."""
        return int(self.first[0]), int(self.first[-1]) + self.weights.shape[1]


def triangle_taps(start: int, count: int, scale: float, size: int) -> Taps:
    """The taps of an antialiased triangle filter along one axis, for ``resample``.

    Output pixel i (``start`` ≤ i < ``start + count``) is centred on input position (i + ½)·``scale`` and
    weighs input pixel j by ``max(0, 1 − |j + ½ − centre| / r)``, r = max(``scale``, 1) (bilinear when
    enlarging); taps outside the ``size`` input pixels get weight 0 and the rest are renormalised, then
    rounded to integers summing to ``RESAMPLE_ONE`` (the largest absorbs the rounding). The taps depend only
    on i, so a region's taps are a slice of the whole axis's, shifted by where the region starts.

    Args:
        start, count: the output pixels, output pixels.
        scale: input pixels per output pixel, > 0.
        size: input pixels along the axis.
    Returns:
        ``Taps``: ``first`` int64 (count,), the first input pixel of each output pixel, ``weights`` int32
        (count, taps).

    Examples:
        >>> from histofast import ops
        >>> taps = ops.triangle_taps(0, 3, 2.0, 6)
        >>> taps.first.tolist(), taps.weights.tolist()
        ([0, 1, 2], [[7021, 7022, 2341, 0], [2048, 6144, 6144, 2048], [0, 2341, 7021, 7022]])
    """
    start, count, size = integer(start, "start"), integer(count, "count"), integer(size, "size")
    if not (isinstance(scale, (int, float, np.number)) and math.isfinite(scale) and scale > 0):
        raise HistofastError(f"scale={scale!r}: must be a positive number (input pixels per output pixel)")
    if count < 1 or size < 1 or start < 0:
        raise HistofastError(f"start={start}, count={count}, size={size}: need start >= 0, count >= 1 and size >= 1")
    radius = max(float(scale), 1.0)
    centre = (np.arange(start, start + count) + 0.5) * scale
    lo = np.floor(centre - radius).astype(np.int64)
    index = lo[:, None] + np.arange(math.ceil(2 * radius) + 2)
    weight = np.clip(1 - np.abs(index + 0.5 - centre[:, None]) / radius, 0, None)
    weight[(index < 0) | (index >= size)] = 0
    total = weight.sum(1)
    if not total.all():
        raise HistofastError(f"start={start}, count={count}: output pixels past the input's {size} pixels")
    weight /= total[:, None]
    nonzero = weight > 0
    head, tail = nonzero.argmax(1), weight.shape[1] - 1 - nonzero[:, ::-1].argmax(1)
    taps = min(int((tail - head).max()) + 1, size)
    first = np.minimum(lo + head, size - taps)
    columns = (first - lo)[:, None] + np.arange(taps)  # the kept taps' columns of ``weight`` (past its end: 0)
    weight = np.pad(weight, ((0, 0), (0, taps)))
    kept = np.floor(np.take_along_axis(weight, columns, 1) * RESAMPLE_ONE + 0.5).astype(np.int32)
    kept[np.arange(count), kept.argmax(1)] += RESAMPLE_ONE - kept.sum(1).astype(np.int32)
    return Taps._checked(first, kept)


def resample(region: Any, x_taps: Taps, y_taps: Taps, *, out: Any = None, threads: int | None = None) -> Any:
    """Resample an image by a separable filter in fixed point: the same integers on the CPU and the GPU.

    ``down(v, x) = (Σ_k wy[v, k]·region[y_first[v] + k, x] + 2⁶) >> 7`` (7 fraction bits kept), then
    ``out(v, u) = (Σ_k wx[u, k]·down(v, x_first[u] + k) + 2²⁰) >> 21``, per channel, in integers: no
    rounding depends on the order of the sums, so any cut of a region into pieces reads the same.

    Args:
        region: uint8 (H, W, 3) RGB.
        x_taps, y_taps: the ``Taps`` along x and y (e.g. ``triangle_taps``), every tap inside the region.
        out: optional C-contiguous uint8 (len(y_first), len(x_first), 3), same kind and device as region.
        threads: CPU threads (OpenMP) for this call; None: OpenMP's default.
    Returns:
        uint8 (len(y_first), len(x_first), 3), the same kind of array as ``region`` on its device.

    Examples:
        >>> import numpy as np
        >>> from histofast import ops
        >>> region = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        >>> half = ops.resample(region, ops.triangle_taps(0, 4, 2.0, 8), ops.triangle_taps(0, 4, 2.0, 8))
        >>> half.shape, int(ops.resample(np.full((8, 8, 3), 77, np.uint8), ops.triangle_taps(0, 3, 2.5, 8),
        ...                              ops.triangle_taps(0, 3, 2.5, 8)).max())
        ((4, 4, 3), 77)
    """
    region, kind = as_input(region, "region")
    image_shape(region, "region")
    for taps, name in ((x_taps, "x_taps"), (y_taps, "y_taps")):
        if not isinstance(taps, Taps):
            raise TypeError(f"{name}: expected ops.Taps (e.g. ops.triangle_taps(...)), got {type(taps).__name__}")
    if out is None:
        out = kind.empty((len(y_taps), len(x_taps), 3), "uint8")
    else:
        check_out(out, kind)
    _C.resample(for_c(region), for_c(out), x_taps.first, x_taps.weights, y_taps.first, y_taps.weights,
                kind.stream(), thread_count(threads))
    return out


def decode_jpeg(data: bytes, out: np.ndarray, *, x: int = 0, y: int = 0, tables: bytes | None = None,
                rgb: bool = False, scale: int = 1) -> np.ndarray:
    """Decode one JPEG strictly into ``out``: pixels ``[y, y + H) × [x, x + W)`` of the decoded image.

    libjpeg-turbo, as OpenSlide uses it: any warning (corrupt or truncated entropy data, a missing marker)
    raises instead of returning repaired pixels. Host memory only. In a build without the libjpeg headers
    (``STRICT_JPEG`` false) imagecodecs decodes instead: the same pixels, but only libjpeg's errors raise, and
    ``scale`` must be 1.

    ``scale`` 2, 4 or 8 decodes the image at 1/scale by libjpeg's DCT scaling (``scale_denom``: a reduced inverse
    DCT of each 8×8 block; Pillow's ``Image.draft`` gives the same pixels): a W × H image decodes to ``ceil(W /
    scale) × ceil(H / scale)`` pixels, each close to the mean of its scale × scale block (within 4 levels, 0.2 on
    average, on generated slides); ``out``, ``x`` and ``y`` are then in those pixels. Every coefficient is still
    Huffman-decoded, so it is only 1.1–1.8× as fast as a full decode, but about 10× a full decode followed by
    ``LevelView``'s resampling (``benchmarks/dct_scaled.py``).

    Args:
        data: the JPEG bytes (a stored tile of a TIFF page).
        out: uint8 (H, W, 3), written in place; rows may be strided (a part of a band), pixels packed.
        x, y: where ``out`` starts in the decoded image, its pixels.
        tables: the page's JPEGTables stream for abbreviated tile streams, or None.
        rgb: the samples are RGB stored without a colour transform (Aperio's RGB JPEG tiles); else the
            markers decide (3 components default to YCbCr).
        scale: 1 (full size), 2, 4 or 8: the image decoded at 1/scale of its size.
    Returns:
        ``out``.
    Raises:
        HistofastError: corrupt data (libjpeg's message), not 3 components, smaller than ``out`` + (x, y) once
            decoded at 1/scale, or a scale other than 1, 2, 4 and 8.

    Examples:
        >>> import imagecodecs
        >>> import numpy as np
        >>> from histofast import ops
        >>> tile = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
        >>> data = imagecodecs.jpeg8_encode(tile, level=95)
        >>> band = np.zeros((20, 40, 3), np.uint8)
        >>> part = ops.decode_jpeg(data, band[2:10, 5:25], x=4, y=8)  # tile pixels [8, 16) × [4, 24)
        >>> np.array_equal(part, imagecodecs.jpeg8_decode(data)[8:16, 4:24]), int(band[:2].max())
        (True, 0)
        >>> ops.decode_jpeg(data, np.empty((4, 6, 3), np.uint8), scale=4).shape  # 16×24 at 1/4 (needs STRICT_JPEG)
        (4, 6, 3)
    """
    scale = _jpeg_scale(scale)
    if not STRICT_JPEG:
        _imagecodecs_decode(data, out, integer(x, "x"), integer(y, "y"), tables, rgb)
        return out
    _C.jpeg_decode(data, tables, 2 if rgb else 0, out, integer(x, "x"), integer(y, "y"), scale)
    return out


def decode_jpegs_counting_white(datas: list[bytes], scratch: np.ndarray, places: np.ndarray, counts: np.ndarray,
                                cell: int, hsv_lower: Sequence[int], hsv_upper: Sequence[int], *,
                                tables: bytes | None = None, rgb: bool = False, scale: int = 1) -> None:
    """``decode_jpeg`` then ``white_counts`` for each of a list of tiles, in one call without the GIL: each
    decoded into ``scratch`` and counted while in cache (the CPU scan's loop; the pixels are not kept). Without
    the strict decoder (``STRICT_JPEG`` false) a loop here, imagecodecs releasing the GIL while it decodes.

    Args:
        datas: the tiles' JPEG bytes.
        scratch: uint8 (tile height, tile width, 3), overwritten by each tile in turn (decoded at 1/scale).
        places: int (len(datas), 4): each tile's (x, y, w, h) in the view, pixels; (w, h) of it are counted.
        counts, cell, hsv_lower, hsv_upper: as for ``white_counts``.
        tables, rgb, scale: as for ``decode_jpeg`` (every tile decoded at 1/scale; places in those pixels).
    Raises:
        HistofastError: a tile does not decode (which one is not said: decode them one by one to find it).

    Examples:
        >>> import imagecodecs
        >>> import numpy as np
        >>> from histofast import ops
        >>> white, tissue = np.full((16, 16, 3), 255, np.uint8), np.full((16, 16, 3), (200, 60, 90), np.uint8)
        >>> datas = [imagecodecs.jpeg8_encode(t, level=95) for t in (white, tissue, white)]
        >>> counts = np.zeros((2, 4), np.int64)  # a 32×64 view in cells of 16: tiles at x 0, 16 and 48, y 16
        >>> places = np.array([[0, 16, 16, 16], [16, 16, 16, 16], [48, 16, 16, 16]])
        >>> ops.decode_jpegs_counting_white(datas, np.empty((16, 16, 3), np.uint8), places, counts, 16,
        ...                                 ops.DEFAULT_HSV_LOWER, ops.DEFAULT_HSV_UPPER)
        >>> counts.tolist()
        [[0, 0, 0, 0], [256, 0, 0, 256]]
    """
    lower, upper = check_hsv_bounds(hsv_lower, hsv_upper)
    scale = _jpeg_scale(scale)
    if not STRICT_JPEG:  # the same loop in Python: imagecodecs releases the GIL while it decodes
        places, cell = host(places, "places", np.int64, (4,)), integer(cell, "cell")
        if len(places) != len(datas):
            raise HistofastError(f"places: expected shape ({len(datas)}, 4), got {places.shape}")
        for data, (x, y, w, h) in zip(datas, places.tolist()):
            if not (1 <= w <= scratch.shape[1] and 1 <= h <= scratch.shape[0] and x >= 0 and y >= 0):
                raise HistofastError(f"places: ({x}, {y}, {w}, {h}): (w, h) must fit the scratch tile, (x, y) >= 0")
            part = _imagecodecs_decode(data, scratch[:h, :w], 0, 0, tables, rgb)
            _C.white_counts(part, counts, x, y, cell, lower, upper)
        return
    _C.decode_jpegs_counting_white(datas, tables, 2 if rgb else 0, scratch, places, counts, integer(cell, "cell"),
                                   lower, upper, scale)


def _jpeg_scale(scale: int) -> int:
    """The JPEG decoders' ``scale``, checked: 1, 2, 4 or 8 (libjpeg's DCT scalings), and 1 without the strict
    decoder."""
    scale = integer(scale, "scale")
    if scale not in (1, 2, 4, 8):
        raise HistofastError(f"scale={scale}: expected 1, 2, 4 or 8 (the image decoded at 1/scale by libjpeg's "
                             "DCT scaling)")
    if scale != 1 and not STRICT_JPEG:  # imagecodecs' jpeg8_decode has no DCT scaling (its shape= does not scale)
        raise HistofastError(f"scale={scale}: DCT-scaled decoding needs the strict JPEG decoder, and this build "
                             f"decodes JPEG through {_C.build_info()['jpeg']}; scale=1 decodes at full size")
    return scale


def _imagecodecs_decode(data: bytes, out: Any, x: int, y: int, tables: bytes | None, rgb: bool) -> np.ndarray:
    """``decode_jpeg`` without the strict decoder (a build without the libjpeg headers): imagecodecs' libjpeg-turbo
    with tifffile's colour spaces, checked as _C checks; ``out`` (as numpy) returned."""
    import imagecodecs

    if Kind(out, "out").cuda:
        raise HistofastError("out: must be in host memory")
    height, width = image_shape(out, "out")
    if x < 0 or y < 0:
        raise HistofastError("x, y: must be >= 0")
    try:  # colorspace 2: libjpeg's JCS_RGB, samples stored without a colour transform
        image = imagecodecs.jpeg8_decode(data, tables=tables, colorspace=2 if rgb else None)
    except Exception as e:  # imagecodecs.Jpeg8Error: libjpeg's error message
        raise HistofastError(f"imagecodecs: {e}") from None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        components = 1 if image.ndim == 2 else image.shape[2]
        raise HistofastError(f"{components} components of {image.dtype}, expected 3 of uint8")
    if x + width > image.shape[1] or y + height > image.shape[0]:
        raise HistofastError(f"decoded {image.shape[1]}×{image.shape[0]} pixels, "
                             f"the tile needs {x + width}×{y + height}")
    dst = for_c(out)
    dst[...] = image[y : y + height, x : x + width]
    return dst
