"""``ExportOptions``: what an export cuts and how it writes it; stored per slide as ``settings.json``, so a
rerun with other settings is refused instead of mixing two exports in one folder."""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

from ..augment import Augment
from ..checks import check_count
from ..data.sources import NO_LABEL
from ..errors import HistofastError
from ..io.level import check_view_args
from ..ops import DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER
from ..tiling import check_grid_args

EXPORT_FORMATS = ("jpg", "png", "tfrecord", "none")
SHARD_TILES = 1024  # tiles per TFRecord shard


@dataclass(frozen=True)
class ExportOptions:
    """What to cut and how to write it (the settings a resumed run must share with the first).

    ``tile_size``, ``stride``: pixels of the tiled view; ``level`` (pyramid level), ``mpp`` (µm per pixel) or
    ``magnification`` (e.g. 20 for 20×): which view, at most one (checked here; a level beyond a slide's levels, or
    a slide without µm/pixel metadata, fails that slide only); ``max_white``: a fraction in [0, 1]."""

    tile_size: int = 512
    stride: int | None = None
    level: int | None = None
    mpp: float | None = None
    magnification: float | None = None
    max_white: float = 0.5
    hsv_lower: tuple[int, int, int] = DEFAULT_HSV_LOWER
    hsv_upper: tuple[int, int, int] = DEFAULT_HSV_UPPER
    format: str = "jpg"
    quality: int = 90
    label: int = NO_LABEL  # class index stored in TFRecords; NO_LABEL (-100): unlabelled
    augment: Augment | None = None
    shard_tiles: int = SHARD_TILES

    def __post_init__(self) -> None:
        check_grid_args(self.tile_size, self.tile_size if self.stride is None else self.stride, self.hsv_lower,
                        self.hsv_upper, self.max_white)
        if self.format not in EXPORT_FORMATS:
            raise HistofastError(f"format={self.format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise HistofastError(f"quality={self.quality!r}: must be an integer in 1..100")
        check_count(self.shard_tiles, "shard_tiles")
        check_view_args(self.level, self.mpp, self.magnification)
        if self.level is not None:
            check_count(self.level, "level", minimum=0)
        if isinstance(self.label, bool) or not isinstance(self.label, numbers.Integral):
            raise HistofastError(f"label={self.label!r}: must be an integer (a class index, or {NO_LABEL}: none)")

    def key(self) -> dict[str, Any]:
        """The settings as JSON-able values, stored beside a slide's output to detect changed reruns."""
        d = asdict(self)
        d["augment"] = None if self.augment is None else asdict(self.augment)
        d["hsv_lower"], d["hsv_upper"] = list(self.hsv_lower), list(self.hsv_upper)
        return d

