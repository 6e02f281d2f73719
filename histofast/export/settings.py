"""``ExportOptions``: what an export cuts (a ``GridSpec``) and how it writes it; stored per slide as
``settings.json``, so a rerun with other settings is refused instead of mixing two exports in one folder."""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

from ..augment import Augment
from ..checks import check_count
from ..data.sources import NO_LABEL
from ..errors import HistofastError
from ..specs import GridSpec, from_keywords

EXPORT_FORMATS = ("jpg", "png", "tfrecord", "h5", "none")
SHARD_TILES = 1024  # tiles per TFRecord shard


@dataclass(frozen=True, init=False)
class ExportOptions:
    """What to cut and how to write it (the settings a resumed run must share with the first).

    Args:
        grid: the tiles (``histofast.GridSpec``: tile size, stride, view, white test). A level beyond a slide's
            levels, or a slide without µm/pixel metadata for ``mpp=``, fails that slide only. The flat grid keywords
            of 0.x (``ExportOptions(512, 256, max_white=0.3)``) still work for one release.
        format: "jpg", "png", "tfrecord", "h5" (the kept tiles' coordinates as CLAM's and TRIDENT's HDF5 patch
            files, ``histofast.export.h5``) or "none" (manifest and grid only).
        quality: JPEG quality, 1..100.
        label: class index stored in TFRecords; ``NO_LABEL`` (−100): unlabelled.
        augment: an ``Augment`` applied to the exported tiles, or None.
        shard_tiles: tiles per TFRecord shard.
    """

    grid: GridSpec
    format: str
    quality: int
    label: int
    augment: Augment | None
    shard_tiles: int

    def __init__(self, *legacy: Any, grid: GridSpec | None = None, format: str = "jpg", quality: int = 90,
                 label: int = NO_LABEL, augment: Augment | None = None, shard_tiles: int = SHARD_TILES,
                 **flat: Any) -> None:
        grid, _, flat = from_keywords("ExportOptions", grid, False, legacy, flat)
        if flat:
            raise TypeError(f"ExportOptions() got unexpected keyword arguments: {', '.join(sorted(flat))}")
        if format not in EXPORT_FORMATS:
            raise HistofastError(f"format={format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise HistofastError(f"quality={quality!r}: must be an integer in 1..100")
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise HistofastError(f"label={label!r}: must be an integer (a class index, or {NO_LABEL}: none)")
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment: expected a histofast.Augment or None, got {type(augment).__name__}")
        for name, value in (("grid", grid), ("format", format), ("quality", quality), ("label", int(label)),
                            ("augment", augment), ("shard_tiles", check_count(shard_tiles, "shard_tiles"))):
            object.__setattr__(self, name, value)

    def key(self) -> dict[str, Any]:
        """The settings as JSON-able values, stored beside a slide's output to detect changed reruns (one flat
        object: the grid's settings beside the others; ``stride`` null when it is the tile size, so that a rerun
        with another tile size names that setting alone)."""
        return self.recorded({**self.grid.as_dict(), "format": self.format, "quality": self.quality,
                              "label": self.label, "augment": None if self.augment is None else asdict(self.augment),
                              "shard_tiles": self.shard_tiles})

    @staticmethod
    def recorded(key: dict[str, Any]) -> dict[str, Any]:
        """A ``settings.json`` of any release as ``key()`` writes it now: a grid setting it lacks (added since) at
        its default, and a stride equal to the tile size null (0.x wrote null for the default, and the number when
        given)."""
        key = {**{k: v for k, v in GridSpec().as_dict().items() if k not in ("tile_size", "stride")}, **key}
        if key.get("stride") is not None and key.get("stride") == key.get("tile_size"):
            return {**key, "stride": None}
        return key
