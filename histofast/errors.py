"""histofast's exception family.

Catch ``HistofastError`` to handle bad input (a ValueError) without also catching bugs;
``SlideError`` names the slide file a per-slide failure came from. The checks that raise them for
bad arguments are in ``histofast.checks``."""
from __future__ import annotations

import os


class HistofastError(ValueError):
    """A bad argument or input; the message names the argument, its value and what was expected."""


class SlideError(HistofastError):
    """A slide file that cannot be opened or read: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")
