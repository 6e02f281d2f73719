"""The array marshalling of ``histofast.ops`` (private): what kind of array came in and how to make outputs
like it, what ``_C`` reads without a copy, and the scalar and small-array arguments as ``_C`` takes them.

Nothing here imports ``_C``: ``ops.py`` is the one door into it."""
from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np

from .errors import HistofastError

INT64 = (-(2**63), 2**63 - 1)


class Kind:
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


def as_input(x: Any, name: str) -> tuple[Any, Kind]:
    """An input image and its kind; numpy array-likes (a PIL image: np.asarray, RGB → (H, W, 3)) as numpy."""
    kind = Kind(x, name)
    if kind.lib == "numpy" and not isinstance(x, np.ndarray):
        x = np.asarray(x)
    return x, kind


def dtype_name(x: Any) -> str:
    """"uint8", "float32", …: numpy's name for the dtype of a numpy array, torch tensor or CuPy array."""
    dtype = x.dtype
    return dtype.name if isinstance(dtype, np.dtype) else str(dtype).removeprefix("torch.")


def image_shape(x: Any, name: str) -> tuple[int, int]:
    """(H, W) of a uint8 (H, W, 3) image; checked here, before any output is allocated (_C checks the rest)."""
    dtype = dtype_name(x)
    if dtype != "uint8":
        raise TypeError(f"{name}: expected uint8, got {dtype}")
    shape = tuple(int(d) for d in x.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise HistofastError(f"{name}: expected shape (H, W, 3), got {shape}")
    return shape[0], shape[1]


def for_c(x: Any) -> Any:
    """What _C reads without a copy: CPU torch tensors as numpy views, array-likes as numpy."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return x if x.is_cuda else x.detach().numpy()
    if module == "cupy" or isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


def host(x: Any, name: str, dtype: type, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
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


def integer(value: Any, name: str) -> int:
    """An integer argument (not a bool) that fits _C's int64."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={bool(value)}: must be an integer, not a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}={value!r}: must be an integer") from None
    if not INT64[0] <= value <= INT64[1]:
        raise HistofastError(f"{name}={value}: out of range (a 64-bit integer)")
    return value


def thread_count(threads: int | None) -> int:
    """A kernel's OpenMP thread count for ``_C``: 0 leaves OpenMP's default."""
    if threads is None:
        return 0
    threads = integer(threads, "threads")
    if threads < 1:
        raise HistofastError(f"threads={threads}: must be at least 1 (or None for OpenMP's default)")
    return threads


def triple(values: Sequence[Any], name: str, cast: type) -> tuple:
    """One value per channel, each through ``cast``."""
    try:
        t = tuple(map(cast, values))
    except (TypeError, ValueError):
        raise TypeError(f"{name}={values!r}: expected 3 numbers") from None
    if len(t) != 3:
        raise HistofastError(f"{name}={values!r}: expected 3 values, one per channel")
    return t


def check_out(out: Any, kind: Kind) -> Any:
    """A given ``out`` must be an array (not an array-like: it is written in place) of the input's kind of device.

    _C checks its dtype, byte order, shape, contiguity, device and that it does not overlap the input."""
    out_kind = Kind(out, "out")
    if out_kind.lib == "numpy" and not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy array, torch tensor or CuPy array, got {type(out).__name__}")
    if out_kind.cuda != kind.cuda:
        raise HistofastError("out: must be on the same device as the input")
    return out
