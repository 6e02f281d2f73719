"""``TileGrid``: the tiles of ``tile_size`` at ``stride`` over one slide level and which of them are
tissue, by the paper's OpenCV HSV test (or CLAM's segmentation); saved and read back as CSV."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..checks import check_device, check_fraction
from ..errors import HistofastError
from ..io import Slide, opened
from ..io.decode import open_rows
from ..io.level import LevelView
from ..renamed import renamed_attribute
from ..utils.atomic import atomic_open
from .cut import cut, tile_format

if TYPE_CHECKING:
    from .cut import TileBatch
    from .tissue import Segmentation

CSV_FIELDS = ("slide", "level", "x", "y", "level_x", "level_y", "tile_size", "stride", "downsample", "scale",
              "mpp", "white_ratio", "max_white", "keep", "skipped", "tissue", "resample")


@dataclass(frozen=True, eq=False)
class TileGrid:
    """The tiles of ``tile_size`` at ``stride`` over one slide level and which of them are tissue.

    Grid pixels are the level's pixels (resampled when ``mpp=``/``magnification=`` asked for a
    resolution between levels: then ``scale`` ≠ 1 level pixels per grid pixel).

    Attributes:
        white_ratio: float32 (rows, cols), white fraction of every grid tile; entry [i, j] is the
            tile at grid pixels (x, y) = (j·stride, i·stride).
        keep: bool (rows, cols), ``white_ratio <= max_white``; with CLAM's segmentation, ``segmented``.
        coords: int64 (N, 2) level-0 (x, y) of the N kept tiles, row-major; ``len(grid) == N``.
        grid_coords: int64 (N, 2) grid-pixel (x, y) of the kept tiles (0.x: ``level_coords``).
        downsample: level-0 pixels per grid pixel; mpp: µm per grid pixel (None when unknown).
        decoder: what decoded the pixels: the slide backend ("tiff", "openslide", "image") or
            "nvimgcodec-gpu" / "nvimgcodec-cpu" ("" for a grid read from CSV).
        skipped: bool (rows, cols), or None for an exact scan: the tiles ``skip_background`` decided from a
            low-resolution level without decoding them (white ratio 1.0, not kept).
        segmented: bool (rows, cols), or None for the paper's rule: the tiles CLAM's tissue segmentation keeps
            (``GridSpec(tissue="otsu")``, ``histofast.tiling.tissue``); ``keep`` is then this, whatever the white
            ratios (``with_max_white`` changes nothing).
        segmentation: that segmentation's contours (level-0 pixels, for drawing), or None (a grid read from CSV).
        resample: how a view between levels (``scale`` ≠ 1) was made: "triangle" (``ops.resample``) or "dct" (the
            level decoded at 1/scale by libjpeg's DCT scaling, ``GridSpec(resample="dct")``); ``view`` reads it so.
    """

    slide_path: str
    level: int
    tile_size: int
    stride: int
    white_ratio: np.ndarray
    max_white: float = 0.5
    downsample: float = 1.0
    scale: float = 1.0
    mpp: float | None = None
    decoder: str = ""
    skipped: np.ndarray | None = None
    segmented: np.ndarray | None = None
    segmentation: Segmentation | None = None
    resample: str = "triangle"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the grid."""
        return self.white_ratio.shape

    @property
    def keep(self) -> np.ndarray:
        return self.white_ratio <= self.max_white if self.segmented is None else self.segmented

    @property
    def tissue(self) -> str:
        """The rule that kept the tiles: "hsv" (the paper's white ratio) or "otsu" (CLAM's segmentation)."""
        return "hsv" if self.segmented is None else "otsu"

    @property
    def grid_coords(self) -> np.ndarray:
        rows, cols = np.nonzero(self.keep)
        return np.stack([cols, rows], 1).astype(np.int64) * self.stride

    @property
    def level_coords(self) -> np.ndarray:
        """Deprecated name of ``grid_coords`` (grid pixels, which are level pixels only without resampling)."""
        return renamed_attribute(self, "level_coords", "grid_coords")

    @property
    def coords(self) -> np.ndarray:
        return np.floor(self.grid_coords * self.downsample + 0.5).astype(np.int64)

    def __len__(self) -> int:
        return int(self.keep.sum())

    def __repr__(self) -> str:
        return (f"TileGrid({Path(self.slide_path).name!r}, level={self.level}, tile_size={self.tile_size}, "
                f"stride={self.stride}, kept {len(self)} of {self.white_ratio.size})")

    def with_max_white(self, max_white: float) -> "TileGrid":
        """The same grid with another threshold (no pixels are read again; a grid CLAM's segmentation kept is
        kept as it was)."""
        return replace(self, max_white=check_fraction(max_white, "max_white"))

    def view(self, slide: Slide) -> LevelView:
        """The pixels this grid was cut from, in ``slide``."""
        return LevelView(slide, self.level, self.scale, dct=self.resample == "dct")

    def tiles(self, slide: Slide | str | os.PathLike | None = None, **options: Any) -> Iterator["TileBatch"]:
        """The kept tiles' pixels in batches, read again from the slide.

        Args:
            slide: an open ``Slide`` or a path; default: ``slide_path``.
            options: ``batch_size``, ``augment``, ``epoch``, ``out_dtype``, ``layout``, ``mean``,
                ``std``, ``device``, ``decode``, as for ``iter_tiles``.
        Yields:
            ``TileBatch``es of the kept tiles in row-major order.
        """
        decode, device = options.pop("decode", "auto"), check_device(options.pop("device", "cpu"))
        batch, epoch = tile_format(options)
        with opened(self.slide_path if slide is None else slide) as s:
            view = self.view(s)
            rows = open_rows(view, decode, device)
            try:
                yield from cut(view, self, lambda band: None, batch, epoch, device=device, rows=rows)
            finally:
                rows.close()

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write every grid tile as one CSV row (columns ``CSV_FIELDS``); atomic (temp file, rename)."""
        rows, cols = np.indices(self.shape).reshape(2, -1)
        level_xy = np.stack([cols, rows], 1) * self.stride
        xy = np.floor(level_xy * self.downsample + 0.5).astype(np.int64)
        keep, ratio = self.keep.ravel(), self.white_ratio.ravel()
        skipped = np.zeros(len(ratio), bool) if self.skipped is None else self.skipped.ravel()
        mpp = "" if self.mpp is None else repr(self.mpp)
        tissue = self.tissue
        with atomic_open(path, newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for k in range(len(ratio)):
                w.writerow([self.slide_path, self.level, xy[k, 0], xy[k, 1], level_xy[k, 0], level_xy[k, 1],
                            self.tile_size, self.stride, repr(self.downsample), repr(self.scale), mpp,
                            f"{ratio[k]:.9g}", repr(self.max_white), int(keep[k]), int(skipped[k]), tissue,
                            self.resample])

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "TileGrid":
        """Read a grid written by ``to_csv``."""
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
        if not records or set(CSV_FIELDS) - {"skipped", "tissue", "resample"} - set(records[0]):  # added since 0.x
            raise HistofastError(f"{path}: not a TileGrid CSV (expected columns {', '.join(CSV_FIELDS)})")
        first = records[0]
        stride = int(first["stride"])
        level_xy = np.array([(int(r["level_x"]), int(r["level_y"])) for r in records]) // stride
        shape = (level_xy[:, 1].max() + 1, level_xy[:, 0].max() + 1)
        ratio = np.empty(shape, np.float32)
        ratio[level_xy[:, 1], level_xy[:, 0]] = [float(r["white_ratio"]) for r in records]
        skipped = None
        if any(r.get("skipped") == "1" for r in records):
            skipped = np.zeros(shape, bool)
            skipped[level_xy[:, 1], level_xy[:, 0]] = [r.get("skipped") == "1" for r in records]
        segmented = None
        if first.get("tissue", "hsv") != "hsv":  # kept by CLAM's segmentation: the keep column says which
            segmented = np.zeros(shape, bool)
            segmented[level_xy[:, 1], level_xy[:, 0]] = [r["keep"] == "1" for r in records]
        return cls(first["slide"], int(first["level"]), int(first["tile_size"]), stride, ratio,
                   float(first["max_white"]), float(first["downsample"]), float(first["scale"]),
                   float(first["mpp"]) if first["mpp"] else None, skipped=skipped, segmented=segmented,
                   resample=first.get("resample") or "triangle")
