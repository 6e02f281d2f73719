"""histofast's exception family.

Catch ``HistofastError`` to handle bad input (a ValueError) without also catching bugs;
``SlideError`` names the slide file a per-slide failure came from."""
from __future__ import annotations

import numbers
import os


class HistofastError(ValueError):
    """A bad argument or input; the message names the argument, its value and what was expected."""


class SlideError(HistofastError):
    """A slide file that cannot be opened or read: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` (1: a positive integer, 0: non-negative); bools and
    non-integers raise ``HistofastError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise HistofastError(f"{name}={value!r}: must be a {kind} integer")
    return int(value)
