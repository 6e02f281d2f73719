"""The settings of a tiling run as two small frozen values, each checked once, here, and then passed as is
through the layers (tiling, data, export, train):

- ``GridSpec``: which tiles, of which view of a slide, and which of them are tissue (the paper's HSV test, or CLAM's
  segmentation);
- ``BatchFormat``: how the kept tiles are handed over (batch size, augmentation, dtype, layout, normalisation).

Every default of these settings lives here. ``tile_grid``, ``iter_tiles``, ``histofast tile`` and the training
config keep their flat keywords and flags for users, and build the spec once; ``TileDataset`` and ``Pipeline``
take ``grid=`` and ``batch=`` (their flat keywords of 0.x still work for one release: ``from_keywords``).

Adding a grid setting: a field of ``GridSpec`` (checked in ``__post_init__``), the code that uses it, and the
public entry points that build a spec (``tile_grid``, ``iter_tiles``, ``TrainConfig``, the ``histofast tile``
flags in ``cli/common.py``). Nothing in between changes."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from . import ops
from .augment import Augment
from .checks import check_count, check_fraction
from .errors import HistofastError
from .io.level import check_view_args

PRESET = "preset"  # BatchFormat's default augment: the consumer's preset decides
# GridSpec.tissue: which rule keeps a tile ("hsv": the paper's white ratio; "otsu": CLAM's segmentation).
TISSUE_RULES = ("hsv", "otsu")
# The grid and batch keywords of 0.x that from_keywords still takes flat, for one release.
GRID_FIELDS = ("tile_size", "stride", "level", "mpp", "magnification", "hsv_lower", "hsv_upper", "max_white")
BATCH_FIELDS = ("batch_size", "augment", "out_dtype", "layout", "mean", "std")


@dataclass(frozen=True)
class GridSpec:
    """A grid of whole tiles over one view of a slide, and the rule that keeps its tissue tiles.

    Args:
        tile_size: tile side, pixels of the view (grid pixels).
        stride: grid step, pixels of the view; None (the default): ``tile_size``, tiles side by side. Stored
            resolved: ``spec.stride`` is always an int (give both to ``dataclasses.replace`` a new tile size).
        level / mpp / magnification: the view, at most one: a pyramid level as stored, or the resolution nearest
            ``mpp`` µm per pixel or ``magnification`` (e.g. 20 for 20×), resampled between levels; default level 0
            (see ``histofast.io.level.select_level``).
        hsv_lower, hsv_upper: OpenCV 8-bit HSV bounds of "white" (H 0–180, S and V 0–255), inclusive.
        max_white: keep tiles whose white fraction is at most this, in [0, 1].
        skip_background: read a low-resolution level first and decode only the stored tiles of tiles that can be
            kept there (``histofast.tiling.background``); the others are reported white (ratio 1.0, not kept, in
            ``TileGrid.skipped``). Faster on slides that are mostly glass; not exact: a tile of faint or very sparse
            tissue may be left out (``histofast bench`` measures how many). Default False: every tile decoded.
        tissue: which rule keeps a tile: "hsv" (the default: the paper's, white fraction at most ``max_white``) or
            "otsu" (CLAM's tissue segmentation, ``histofast.tiling.tissue``: Otsu's threshold of the median-blurred
            saturation of a low-resolution level, contours filtered by area, and CLAM's four-point test per tile;
            white ratios are still measured and reported, but ``max_white`` plays no part). With
            ``skip_background`` and "otsu", only the tiles the segmentation keeps are decoded.
        resample: how ``mpp``/``magnification`` between levels are made: "triangle" (the default: the antialiased
            triangle filter, ``ops.resample``, exact to its integer formula) or "dct" (a JPEG level decoded at 1/2,
            1/4 or 1/8 by libjpeg's DCT scaling when the factor is within 5% of one of those; faster, and close to
            the block mean rather than to the triangle filter: ``benchmarks/dct_scaled.py`` measures both; where DCT
            scaling cannot serve, the triangle filter does, with a warning, and ``TileGrid.resample`` says which).
    Raises:
        HistofastError: naming the first bad setting (no slide is needed to check them).

    Examples:
        >>> from histofast.specs import GridSpec
        >>> GridSpec(256, max_white=0.3).stride
        256
    """

    tile_size: int = 512
    stride: int | None = None
    level: int | None = None
    mpp: float | None = None
    magnification: float | None = None
    hsv_lower: tuple[int, int, int] = ops.DEFAULT_HSV_LOWER
    hsv_upper: tuple[int, int, int] = ops.DEFAULT_HSV_UPPER
    max_white: float = 0.5
    skip_background: bool = False
    tissue: str = "hsv"
    resample: str = "triangle"

    def __post_init__(self) -> None:
        tile_size = check_count(self.tile_size, "tile_size", unit="pixels")
        stride = tile_size if self.stride is None else check_count(self.stride, "stride", unit="pixels")
        lower, upper = ops.check_hsv_bounds(self.hsv_lower, self.hsv_upper)
        max_white = check_fraction(self.max_white, "max_white")
        check_view_args(self.level, self.mpp, self.magnification, self.resample)
        level = None if self.level is None else check_count(self.level, "level", minimum=0)
        if not isinstance(self.skip_background, (bool, np.bool_)):
            raise HistofastError(f"skip_background={self.skip_background!r}: must be True or False")
        if not isinstance(self.tissue, str) or self.tissue not in TISSUE_RULES:
            raise HistofastError(f"tissue={self.tissue!r}: expected 'hsv' (the paper's white-ratio rule) or 'otsu' "
                                 "(CLAM's tissue segmentation)")
        for name, value in (("tile_size", tile_size), ("stride", stride), ("hsv_lower", lower),
                            ("hsv_upper", upper), ("max_white", max_white), ("level", level),
                            ("skip_background", bool(self.skip_background))):
            object.__setattr__(self, name, value)  # normalised: plain ints, int triples, a float

    def view_args(self) -> tuple[int | None, float | None, float | None, str]:
        """(level, mpp, magnification, resample), as ``select_level`` takes them."""
        return self.level, self.mpp, self.magnification, self.resample

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values (HSV bounds as lists)."""
        d = dataclasses.asdict(self)
        d["hsv_lower"], d["hsv_upper"] = list(self.hsv_lower), list(self.hsv_upper)
        return d


@dataclass(frozen=True)
class BatchFormat:
    """How kept tiles are handed over: ``batch_size`` tiles a batch, each augmented, converted and normalised by
    ``ops.augment`` (whose defaults these are: float32 NCHW in [0, 1]).

    Args:
        batch_size: tiles (or samples) per batch; the last batch of a pass may be smaller.
        augment: an ``Augment`` (tile k of an epoch gets draw k, whatever the batching), None (plain tiles), or
            ``PRESET`` (the default): what the consumer's preset says: ``TileDataset``, ``Pipeline`` and
            ``TFRecordPipeline`` with ``preset="train"`` augment with ``Augment(rot90=True, flip=True,
            max_shift=16, seed=seed)``; with ``preset="eval"``, and in ``iter_tiles``, none.
        out_dtype: "float32", "float16" or "uint8" (uint8 is never normalised).
        layout: "NCHW" → (B, 3, T, T) or "NHWC" → (B, T, T, 3).
        mean, std: per channel, in units of pixel / 255: ``(x / 255 - mean) / std``.
    Raises:
        HistofastError or TypeError: naming the first bad setting.

    Examples:
        >>> from histofast.specs import BatchFormat
        >>> BatchFormat(32, mean=(0.5, 0.5, 0.5), std=[0.25] * 3).std
        (0.25, 0.25, 0.25)
    """

    batch_size: int = 64
    augment: Augment | Literal["preset"] | None = "preset"
    out_dtype: str = "float32"
    layout: str = "NCHW"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", check_count(self.batch_size, "batch_size"))
        if self.augment is not None and self.augment != PRESET and not isinstance(self.augment, Augment):
            raise TypeError(f"augment: expected a histofast.Augment, None or {PRESET!r}, got "
                            f"{type(self.augment).__name__}")
        mean, std = ops.check_batch_format(self.out_dtype, self.layout, self.mean, self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def resolved(self, preset: Augment | None) -> BatchFormat:
        """This format with ``augment=PRESET`` replaced by the consumer's ``preset`` augmentation."""
        return self if not isinstance(self.augment, str) else dataclasses.replace(self, augment=preset)


def from_keywords(owner: str, grid: GridSpec | None, batch: BatchFormat | None, positional: Sequence[Any],
                  flat: dict[str, Any], stride_was: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """The one adapter from the flat keywords of 0.x (``TileDataset(src, 512, 256, max_white=0.3, dtype=…)``) to the
    specs: ``positional`` (tile_size, stride) and the ``flat`` grid and batch keywords become a ``GridSpec`` and a
    ``BatchFormat`` (with ``FutureWarning``: they go in the next release), ``dtype`` read as ``out_dtype``.

    Args:
        owner: the caller's name, for messages ("TileDataset").
        grid, batch: the specs given (None: built from the flat keywords and the defaults); ``grid=False``: the
            caller takes no grid (its grid keywords are left in ``flat``, and None is returned for it); likewise
            ``batch=False``.
        positional: extra positional arguments, read as (tile_size, stride).
        flat: the caller's other keywords; the grid and batch ones are taken out.
        stride_was: the caller's stride default of 0.x, where it was not the tile size: said once in the warning
            when neither ``grid`` nor ``stride`` is given.
    Returns:
        (grid, batch, the keywords left).
    Raises:
        TypeError: a spec given together with its flat keywords, too many positional arguments, or keywords
            the caller does not take.
    """
    if len(positional) > 2:
        raise TypeError(f"{owner}() takes at most 2 positional arguments after the source (tile_size, stride), "
                        f"got {len(positional)}")
    flat = dict(flat)
    takes_grid, takes_batch = grid is not False, batch is not False
    if "dtype" in flat and takes_batch:
        flat["out_dtype"] = flat.pop("dtype")
    grid_kw = {**dict(zip(("tile_size", "stride"), positional)),
               **{k: flat.pop(k) for k in GRID_FIELDS if k in flat and takes_grid}}
    batch_kw = {k: flat.pop(k) for k in BATCH_FIELDS if k in flat and takes_batch}
    for kind, spec, given in (("grid", grid, grid_kw), ("batch", batch, batch_kw)):
        if spec is not None and given:
            raise TypeError(f"{owner}: {', '.join(given)} given with {kind}=: set them in the {kind} spec")
    if grid_kw or batch_kw:
        names = ", ".join([*grid_kw, *batch_kw])
        warnings.warn(f"{owner}({names}=…): pass grid=histofast.GridSpec(…) and batch=histofast.BatchFormat(…); the "
                      "flat keywords go in the next release", FutureWarning, stacklevel=3)
    if not takes_grid:
        grid = None
    elif grid is None:
        grid = GridSpec(**grid_kw)
        if stride_was is not None and "stride" not in grid_kw:
            warnings.warn(f"{owner}: stride now defaults to the tile size ({grid.tile_size} pixels; it was "
                          f"{stride_was}) as everywhere else; pass grid=histofast.GridSpec({grid.tile_size}, "
                          f"{stride_was}) for the old grid", FutureWarning, stacklevel=3)
    if not takes_batch:
        batch = None
    elif batch is None:
        batch = BatchFormat(**batch_kw)
    for kind, spec, cls, taken in (("grid", grid, GridSpec, takes_grid), ("batch", batch, BatchFormat, takes_batch)):
        if taken and not isinstance(spec, cls):
            raise TypeError(f"{kind}: expected a histofast.{cls.__name__}, got {type(spec).__name__}")
    return grid, batch, flat
