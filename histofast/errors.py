"""histofast's exception family.

Catch ``HistofastError`` to handle bad input (a ValueError) without also catching bugs;
``SlideError`` names the slide file a per-slide failure came from. The checks that raise them for
bad arguments are in ``histofast.checks``."""
from __future__ import annotations

import os


class HistofastError(ValueError):
    """A bad argument or input; the message names the argument, its value and what was expected."""


class SlideError(HistofastError):
    """A slide file that cannot be opened or read: ``path`` and ``reason`` say which and why (a remote slide's URL
    shown without its query values: ``SlideURL.shown``)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = getattr(path, "shown", None) or os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


class SmallerThanTileError(SlideError):
    """The chosen level of a slide is smaller than one tile of the grid: ``level``, ``size`` (width, height) in level
    pixels and ``tile_size`` say which, so a caller whose "tile" is something else (an image of ``image_size``)
    can say so in its own words."""

    def __init__(self, path: str | os.PathLike, level: int, size: tuple[int, int], tile_size: int,
                 what: str = "tile (tile_size={})") -> None:
        self.level, self.size, self.tile_size = level, size, tile_size
        super().__init__(path, f"level {level} is {size[0]}×{size[1]} pixels, smaller than one "
                               f"{what.format(tile_size)}")
