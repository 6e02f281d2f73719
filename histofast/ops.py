"""The one door into histofast's compiled kernels (``histofast._C``).

Each op takes a numpy array, a torch tensor (CPU or CUDA) or a CuPy array, runs on the device the
data lives on (CUDA ops on the caller's current stream, without synchronising; only white_ratio, on a
device without memory pools, waits for the stream to free its scratch memory), and returns the same
kind of array on the same device. Images are uint8 (H, W, 3) RGB in level pixels; rows may be
strided (a crop of a larger array), pixels must be packed. Numpy array-likes (a PIL RGB image) are read
as ``np.asarray(x)``. An ``out`` must be an array in the machine's byte order that shares no memory
with the input; every argument is checked before anything is allocated."""
from __future__ import annotations

import functools
import operator
from typing import Any, Sequence

import numpy as np

from . import _C
from .errors import HistofastError

DEFAULT_HSV_LOWER = (0, 0, 200)
DEFAULT_HSV_UPPER = (180, 30, 255)
# torchvision's ImageNet normalisation (units of pixel / 255): the ``mean``/``std`` of pretrained models' inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUT_DTYPES = ("float32", "float16", "uint8")
LAYOUTS = ("NCHW", "NHWC")
HSV_TOP = (180, 255, 255)  # the largest H, S, V of OpenCV's 8-bit HSV
_INT64 = (-(2**63), 2**63 - 1)
# The fast path's JPEG decoder, decided here once: libjpeg-turbo in _C, strict (every libjpeg warning raises),
# in a build that found the libjpeg headers; else imagecodecs' libjpeg-turbo: the same pixels, but corrupt data
# that libjpeg only warns of decode (repaired) instead of raising. ``build_info()["jpeg"]`` says which.
STRICT_JPEG: bool = hasattr(_C, "jpeg_decode")


class _Kind:
    """Where an input lives and how to make outputs like it: numpy, torch (cpu/cuda) or cupy."""

    def __init__(self, x: Any, name: str) -> None:
        module = type(x).__module__.split(".")[0]
        if module == "torch":
            self.lib, self.device = "torch", x.device
        elif module == "cupy":
            self.lib, self.device = "cupy", x.device
        elif isinstance(x, np.ndarray) or hasattr(x, "__array_interface__") or hasattr(x, "__array__"):
            self.lib, self.device = "numpy", None  # array-likes (a PIL image too) are read as np.asarray(x)
        else:
            raise TypeError(f"{name}: expected a numpy array, torch tensor or CuPy array, got {type(x).__name__}")

    @property
    def cuda(self) -> bool:
        return self.lib == "cupy" or (self.lib == "torch" and self.device.type == "cuda")

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        if self.lib == "torch":
            import torch

            return torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
        if self.lib == "cupy":
            import cupy

            with self.device:
                return cupy.empty(shape, dtype=dtype)
        return np.empty(shape, dtype=dtype)

    def stream(self) -> int:
        """The caller's current CUDA stream as an integer (0 on the CPU)."""
        if self.lib == "torch" and self.cuda:
            import torch

            return torch.cuda.current_stream(self.device).cuda_stream
        if self.lib == "cupy":
            import cupy

            with self.device:
                return cupy.cuda.get_current_stream().ptr
        return 0


def _input(x: Any, name: str) -> tuple[Any, _Kind]:
    """An input image and its kind; numpy array-likes (a PIL image: np.asarray, RGB → (H, W, 3)) as numpy."""
    kind = _Kind(x, name)
    if kind.lib == "numpy" and not isinstance(x, np.ndarray):
        x = np.asarray(x)
    return x, kind


def _dtype_name(x: Any) -> str:
    """"uint8", "float32", …: numpy's name for the dtype of a numpy array, torch tensor or CuPy array."""
    dtype = x.dtype
    return dtype.name if isinstance(dtype, np.dtype) else str(dtype).removeprefix("torch.")


def _image_shape(x: Any, name: str) -> tuple[int, int]:
    """(H, W) of a uint8 (H, W, 3) image; checked here, before any output is allocated (_C checks the rest)."""
    dtype = _dtype_name(x)
    if dtype != "uint8":
        raise TypeError(f"{name}: expected uint8, got {dtype}")
    shape = tuple(int(d) for d in x.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise HistofastError(f"{name}: expected shape (H, W, 3), got {shape}")
    return shape[0], shape[1]


def _for_c(x: Any) -> Any:
    """What _C reads without a copy: CPU torch tensors as numpy views, array-likes as numpy."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return x if x.is_cuda else x.detach().numpy()
    if module == "cupy" or isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


def _host(x: Any, name: str, dtype: type, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """A per-tile parameter as a host numpy array of `dtype` (small; copied from a GPU if needed)."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        x = x.detach().cpu().numpy()
    elif module == "cupy":
        x = x.get()
    a = np.asarray(x)
    if a.dtype.kind not in {np.int64: "iub", np.bool_: "iub", np.float64: "iubf"}[dtype]:
        raise TypeError(f"{name}: expected {np.dtype(dtype).name} values, got {a.dtype}")
    if a.shape[1:] != shape_tail:
        raise HistofastError(f"{name}: expected shape (N{''.join(', ' + str(d) for d in shape_tail)}), got {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def _int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={bool(value)}: must be an integer, not a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}={value!r}: must be an integer") from None
    if not _INT64[0] <= value <= _INT64[1]:
        raise HistofastError(f"{name}={value}: out of range (a 64-bit integer)")
    return value


def _threads(threads: int | None) -> int:
    """A kernel's OpenMP thread count for ``_C``: 0 leaves OpenMP's default."""
    if threads is None:
        return 0
    threads = _int(threads, "threads")
    if threads < 1:
        raise HistofastError(f"threads={threads}: must be at least 1 (or None for OpenMP's default)")
    return threads


def _triple(values: Sequence[Any], name: str, cast: type) -> tuple:
    try:
        t = tuple(cast(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={values!r}: expected 3 numbers") from None
    if len(t) != 3:
        raise HistofastError(f"{name}={values!r}: expected 3 values, one per channel")
    return t


def _hsv_bounds(lower: Sequence[Any], upper: Sequence[Any]) -> tuple[tuple, tuple]:
    """lower, upper as int triples within OpenCV's 8-bit HSV, lower ≤ upper per channel."""
    if isinstance(lower, tuple) and isinstance(upper, tuple):  # checked once: white_counts runs per decoded tile
        return _checked_hsv_bounds(lower, upper)
    return _checked_hsv_bounds.__wrapped__(lower, upper)


@functools.lru_cache(maxsize=64)
def _checked_hsv_bounds(lower: Sequence[Any], upper: Sequence[Any]) -> tuple[tuple, tuple]:
    bounds = {"lower": _triple(lower, "lower", operator.index), "upper": _triple(upper, "upper", operator.index)}
    for c, top in enumerate(HSV_TOP):
        for name, b in bounds.items():
            if not 0 <= b[c] <= top:
                raise HistofastError(f"{name}[{c}]={b[c]}: {'HSV'[c]} must lie in [0, {top}] (OpenCV 8-bit HSV)")
        if bounds["lower"][c] > bounds["upper"][c]:
            raise HistofastError(f"lower[{c}]={bounds['lower'][c]} exceeds upper[{c}]={bounds['upper'][c]}")
    return bounds["lower"], bounds["upper"]


def _check_out(out: Any, kind: _Kind) -> Any:
    """A given ``out`` must be an array (not an array-like: it is written in place) of the input's kind of device.

    _C checks its dtype, byte order, shape, contiguity, device and that it does not overlap the input."""
    out_kind = _Kind(out, "out")
    if out_kind.lib == "numpy" and not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy array, torch tensor or CuPy array, got {type(out).__name__}")
    if out_kind.cuda != kind.cuda:
        raise HistofastError("out: must be on the same device as the input")
    return out


def rgb_to_hsv(rgb: Any, *, out: Any = None) -> Any:
    """RGB → HSV in OpenCV's 8-bit convention (H 0–179, S and V 0–255).

    Bit-identical to ``cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)``.

    Args:
        rgb: uint8 (H, W, 3).
        out: optional uint8 (H, W, 3) C-contiguous output of the same kind and device.
    Returns:
        uint8 (H, W, 3) HSV, the same kind of array as ``rgb``.
    """
    rgb, kind = _input(rgb, "rgb")
    height, width = _image_shape(rgb, "rgb")
    out = kind.empty((height, width, 3), "uint8") if out is None else _check_out(out, kind)
    _C.rgb_to_hsv(_for_c(rgb), _for_c(out), kind.stream())
    return out


def grid_shape(height: int, width: int, tile_size: int, stride: int) -> tuple[int, int]:
    """(rows, cols) of the tile grid ``white_ratio`` computes over a height×width region (pixels).

    Raises ``HistofastError`` for the values ``white_ratio`` rejects (tile_size or stride not
    positive, tile larger than the region)."""
    return tuple(_C.grid_shape(_int(height, "height"), _int(width, "width"), _int(tile_size, "tile_size"),
                               _int(stride, "stride")))


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
    """
    region, kind = _input(region, "region")
    height, width = _image_shape(region, "region")
    tile_size, stride = _int(tile_size, "tile_size"), _int(stride, "stride")
    lower, upper = _hsv_bounds(lower, upper)
    rows_cols = grid_shape(height, width, tile_size, stride)
    out = kind.empty(rows_cols, "float32") if out is None else _check_out(out, kind)
    _C.white_ratio(_for_c(region), _for_c(out), tile_size, stride, lower, upper, kind.stream(), _threads(threads))
    return out


def check_batch_format(
    out_dtype: str, layout: str, mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Check ``augment``'s output arguments (before any pixels are read); returns (mean, std) as float triples.

    ``_C`` checks that std is non-zero and finite."""
    if out_dtype not in OUT_DTYPES:
        raise HistofastError(f"out_dtype={out_dtype!r}: expected one of {', '.join(OUT_DTYPES)}")
    if layout not in LAYOUTS:
        raise HistofastError(f"layout={layout!r}: expected 'NCHW' or 'NHWC'")
    mean, std = _triple(mean, "mean", float), _triple(std, "std", float)
    if out_dtype == "uint8" and (mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0)):
        raise HistofastError(f"mean={mean}, std={std} with out_dtype='uint8': uint8 output is never normalised; "
                             "pass out_dtype='float32' or 'float16' to normalise, or leave mean and std out")
    return mean, std


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
    """
    region, kind = _input(region, "region")
    height, width = _image_shape(region, "region")
    tile_size = _int(tile_size, "tile_size")
    grid_shape(height, width, tile_size, 1)  # 0 < tile_size ≤ H, W: checked before anything is allocated
    mean, std = check_batch_format(out_dtype, layout, mean, std)
    if out is not None:
        _check_out(out, kind)
        got = _dtype_name(out)
        if got not in OUT_DTYPES:
            raise TypeError(f"out: expected uint8, float16 or float32, got {got}")
        if got != out_dtype:
            raise HistofastError(f"out: dtype {got} contradicts out_dtype={out_dtype!r} (pass out_dtype={got!r})")
    origins = _host(origins, "origins", np.int64, (2,))
    n = len(origins)
    rot90 = np.zeros(n, np.int64) if rot90 is None else _host(rot90, "rot90", np.int64)
    flip = np.zeros(n, np.bool_) if flip is None else _host(flip, "flip", np.bool_)
    shift = np.zeros((n, 2), np.int64) if shift is None else _host(shift, "shift", np.int64, (2,))
    angle = np.zeros(n, np.float64) if angle is None else _host(angle, "angle", np.float64)
    if out is None:
        shape = (n, 3, tile_size, tile_size) if layout == "NCHW" else (n, tile_size, tile_size, 3)
        out = kind.empty(shape, out_dtype)
    _C.augment(
        _for_c(region), _for_c(out), tile_size, origins, rot90, flip, shift, angle,
        mean, std, layout, kind.stream(), _threads(threads),
    )
    return out


def white_counts(part: np.ndarray, counts: np.ndarray, x: int, y: int, cell: int,
                 hsv_lower: Sequence[int] = DEFAULT_HSV_LOWER, hsv_upper: Sequence[int] = DEFAULT_HSV_UPPER) -> None:
    """Add the white pixels of ``part`` to the cell counts of a grid (host only, safe from many threads).

    The fused half of ``white_ratio``: a decoder thread counts what it just decoded, while it is in cache.

    Args:
        part: uint8 (H, W, 3), the view's pixels at (x, y); rows may be strided, pixels packed.
        counts: int64 (cells_y, cells_x), C-contiguous: white pixels per cell of side ``cell`` over the view,
            added to atomically. Pixels past the last whole cell are not counted.
        x, y: where ``part`` lies in the view, pixels.
        cell: the cells' side, pixels (gcd(tile_size, stride) for a grid).
        hsv_lower, hsv_upper: as for ``white_ratio``.
    """
    lower, upper = _hsv_bounds(hsv_lower, hsv_upper)
    _C.white_counts(part, counts, _int(x, "x"), _int(y, "y"), _int(cell, "cell"), lower, upper)

def decode_jpegs_counting_white(datas: list[bytes], scratch: np.ndarray, places: np.ndarray, counts: np.ndarray,
                                cell: int, hsv_lower: Sequence[int], hsv_upper: Sequence[int], *,
                                tables: bytes | None = None, rgb: bool = False) -> None:
    """``decode_jpeg`` then ``white_counts`` for each of a list of tiles, in one call without the GIL: each
    decoded into ``scratch`` and counted while in cache (the CPU scan's loop; the pixels are not kept). Without
    the strict decoder (``STRICT_JPEG`` false) a loop here, imagecodecs releasing the GIL while it decodes.

    Args:
        datas: the tiles' JPEG bytes.
        scratch: uint8 (tile height, tile width, 3), overwritten by each tile in turn.
        places: int (len(datas), 4): each tile's (x, y, w, h) in the view, pixels; (w, h) of it are counted.
        counts, cell, hsv_lower, hsv_upper: as for ``white_counts``.
        tables, rgb: as for ``decode_jpeg``.
    Raises:
        HistofastError: a tile does not decode (which one is not said: decode them one by one to find it).
    """
    lower, upper = _hsv_bounds(hsv_lower, hsv_upper)
    if not STRICT_JPEG:  # the same loop in Python: imagecodecs releases the GIL while it decodes
        places, cell = _host(places, "places", np.int64, (4,)), _int(cell, "cell")
        if len(places) != len(datas):
            raise HistofastError(f"places: expected shape ({len(datas)}, 4), got {places.shape}")
        for data, (x, y, w, h) in zip(datas, places.tolist()):
            if not (1 <= w <= scratch.shape[1] and 1 <= h <= scratch.shape[0] and x >= 0 and y >= 0):
                raise HistofastError(f"places: ({x}, {y}, {w}, {h}): (w, h) must fit the scratch tile, (x, y) >= 0")
            part = _imagecodecs_decode(data, scratch[:h, :w], 0, 0, tables, rgb)
            _C.white_counts(part, counts, x, y, cell, lower, upper)
        return
    _C.jpeg_count_white(datas, tables, 2 if rgb else 0, scratch, places, counts, _int(cell, "cell"), lower, upper)


def decode_jpeg(data: bytes, out: np.ndarray, *, x: int = 0, y: int = 0, tables: bytes | None = None,
                rgb: bool = False) -> np.ndarray:
    """Decode one JPEG strictly into ``out``: pixels ``[y, y + H) × [x, x + W)`` of the decoded image.

    libjpeg-turbo, as OpenSlide uses it: any warning (corrupt or truncated entropy data, a missing marker)
    raises instead of returning repaired pixels. Host memory only. In a build without the libjpeg headers
    (``STRICT_JPEG`` false) imagecodecs decodes instead: the same pixels, but only libjpeg's errors raise.

    Args:
        data: the JPEG bytes (a stored tile of a TIFF page).
        out: uint8 (H, W, 3), written in place; rows may be strided (a part of a band), pixels packed.
        x, y: where ``out`` starts in the decoded image, its pixels.
        tables: the page's JPEGTables stream for abbreviated tile streams, or None.
        rgb: the samples are RGB stored without a colour transform (Aperio's RGB JPEG tiles); else the
            markers decide (3 components default to YCbCr).
    Returns:
        ``out``.
    Raises:
        HistofastError: corrupt data (libjpeg's message), not 3 components, or smaller than ``out`` + (x, y).
    """
    if not STRICT_JPEG:
        _imagecodecs_decode(data, out, _int(x, "x"), _int(y, "y"), tables, rgb)
        return out
    _C.jpeg_decode(data, tables, 2 if rgb else 0, out, _int(x, "x"), _int(y, "y"))
    return out


def _imagecodecs_decode(data: bytes, out: Any, x: int, y: int, tables: bytes | None, rgb: bool) -> np.ndarray:
    """``decode_jpeg`` without the strict decoder (a build without the libjpeg headers): imagecodecs' libjpeg-turbo
    with tifffile's colour spaces, checked as _C checks; ``out`` (as numpy) returned."""
    import imagecodecs

    if _Kind(out, "out").cuda:
        raise HistofastError("out: must be in host memory")
    height, width = _image_shape(out, "out")
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
    dst = _for_c(out)
    dst[...] = image[y : y + height, x : x + width]
    return dst

