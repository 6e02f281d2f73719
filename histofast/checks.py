"""The one set of argument checks: counts (positive or non-negative integers), fractions and devices.

Each returns the value in its plain Python type or raises ``HistofastError`` naming the argument,
its value and what was expected, e.g. ``tile_size=0: must be a positive integer (pixels)``."""
from __future__ import annotations

import numbers
from typing import Any

from .errors import HistofastError


def check_count(value: object, name: str, minimum: int = 1, unit: str | None = None) -> int:
    """``value`` as an int ≥ ``minimum`` (1: a positive integer, 0: non-negative); bools and
    non-integers raise. ``unit`` (e.g. "pixels") is named in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise HistofastError(f"{name}={value!r}: must be a {kind} integer" + (f" ({unit})" if unit else ""))
    return int(value)


def count_or_default(value: object, name: str, default: int) -> int:
    """A positive integer argument where None means ``default``."""
    return default if value is None else check_count(value, name)


def check_fraction(value: object, name: str) -> float:
    """``value`` as a float in [0, 1] (bools and non-numbers raise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise HistofastError(f"{name}={value!r}: must be a fraction in [0, 1]")
    return float(value)


def check_device(device: Any) -> str:
    """"cpu", or "cuda:<index>" for "cuda" or "cuda:<index>": a bare "cuda" is the caller's current CUDA device,
    resolved now (CUDA's current device is per thread: decoder and lane threads would otherwise start on device 0,
    e.g. after DDP's ``torch.cuda.set_device(local_rank)``). The device must exist here."""
    if device == "cpu":
        return "cpu"
    index = device[5:] if isinstance(device, str) and device.startswith("cuda:") else None
    if device != "cuda" and not (index and index.isdecimal() and index.isascii()):
        raise HistofastError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:<index>'")
    from . import _C
    from .build import cuda_available

    if not cuda_available():
        raise HistofastError(f"device={device!r}: no CUDA device is available here (use device='cpu')")
    if index is None:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    if int(index) >= _C.cuda_device_count():
        raise HistofastError(f"device={device!r}: there are {_C.cuda_device_count()} CUDA devices here "
                             f"(indices 0 to {_C.cuda_device_count() - 1})")
    return f"cuda:{int(index)}"
