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
    """"cpu", "cuda" or "cuda:<index>"; a CUDA device must be available here."""
    if device == "cpu":
        return "cpu"
    if not isinstance(device, str) or not (device == "cuda" or device.startswith("cuda:")):
        raise HistofastError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:<index>'")
    from .build import cuda_available

    if not cuda_available():
        raise HistofastError(f"device={device!r}: no CUDA device is available here (use device='cpu')")
    return device
