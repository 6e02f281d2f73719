"""Synthetic H&E-like data for demos, tests and benchmarks (nothing is ever downloaded): tissue images,
pyramidal Aperio-style JPEG slides written band by band, and class-folder region datasets (NORM/SCLC/SC/ADC).
The same slides as DICOM WSI series: ``histofast.synth_dicom.write_dicom_slide`` (a module of its own: it imports
this one)."""
from __future__ import annotations

import csv
import os
import pathlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import imagecodecs
import numpy as np
import tifffile

from .checks import check_count
from .errors import HistofastError
from .renamed import renamed_keyword
from .utils.atomic import atomic_open, atomic_path, atomic_write
from .utils.encode import IMAGE_FORMATS, encode_image

# Stain colours, RGB.
_BACKGROUND = np.array([242, 240, 244], np.uint8)
_STROMA = np.array([228, 150, 190], np.uint8)
_NUCLEUS = np.array([95, 60, 150], np.uint8)
_NOISE_SIGMA, _NOISE_CLIP = 6.0, 11  # clipping keeps every colour + noise inside 0..255 without a clip pass
_NUCLEUS_CELL, _NUCLEUS_LEVEL = 6.0, 0.72  # nuclei: a value-noise field on a 6 px lattice, above 0.72
_THUMBNAIL_SIDE = 1024  # an Aperio thumbnail's longer side is about this, in pixels
_APERIO_HEAD = "Aperio Image Library v10.0.0 (histofast synth)"

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


# --- random-access value noise: the value at a pixel never depends on which band asked for it -------------

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over uint64 (wrapping arithmetic): well-spread bits from consecutive integers."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _key(*parts: int) -> int:
    """A 64-bit random key from integers (seed, purpose number, ...); distinct tuples give unrelated draws."""
    h = np.zeros(1, _U64)
    for part in parts:
        h = _mix(h ^ _U64(part & _MASK64))
    return int(h[0])


def _lattice(key: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) values at integer lattice points: float32 (len(rows), len(cols)), a pure function of key."""
    r = rows.astype(_U64)[:, None] << _U64(32)
    h = _mix(_mix((r | cols.astype(_U64)[None, :]) ^ _U64(key)))
    return (h >> _U64(40)).astype(np.float32) * np.float32(2.0**-24)


def _field(key: int, cell: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Smooth field in [0, 1): bilinear interpolation of a lattice of spacing `cell` pixels.

    Args:
        ys, xs: ascending int64 pixel coordinates (global, so bands of one image join seamlessly).
    Returns:
        float32 (len(ys), len(xs)).
    """
    u, v = ys / cell, xs / cell
    i, j = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    wy, wx = (u - i).astype(np.float32), (v - j).astype(np.float32)
    coarse = _lattice(key, np.arange(i[0], i[-1] + 2), np.arange(j[0], j[-1] + 2))
    j = j - j[0]
    along_x = coarse[:, j] + wx * (coarse[:, j + 1] - coarse[:, j])  # (coarse rows, len(xs)): small
    step = along_x[1:] - along_x[:-1]
    i = i - i[0]
    return along_x[i] + wy[:, None] * step[i]


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Area mean over factor×factor blocks: uint8 (H//factor, W//factor, C), rounded."""
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    image = image[:h, :w]
    # Summing strided slices beats a reshape-sum over two axes ~10×; uint16 holds 16·16·255.
    rows = image[0::factor].astype(np.uint16 if factor <= 16 else np.uint32)
    for k in range(1, factor):
        rows += image[k::factor]
    total = rows[:, 0::factor].copy()
    for k in range(1, factor):
        total += rows[:, k::factor]
    return ((total + factor * factor // 2) // (factor * factor)).astype(np.uint8)


# --- the tissue model shared by tissue_image and write_slide -------------------------------------------------

@dataclass(frozen=True)
class _Tissue:
    """Where tissue and nuclei lie and what colour each pixel has, for one seed: any window, in any order.

    ``noise`` is a periodic tile of background colour plus clipped Gaussian noise, uint8 (P, P, 3); with P the
    slide tile size every background-only tile is the same picture, so it is JPEG-encoded once.
    """

    blob_key: int
    nucleus_key: int
    blob_cell: float
    threshold: float
    noise: np.ndarray
    delta: np.ndarray  # uint8 (3, 3): what background, stroma and nucleus add to the background, modulo 256

    @classmethod
    def build(cls, height: int, width: int, seed: int, tissue_fraction: float, period: int,
              stain: float = 1.0) -> _Tissue:
        blob_key, nucleus_key, noise_key = (_key(seed, purpose) for purpose in (1, 2, 3))
        blob_cell = float(max(16, min(height, width) // 6))
        # The threshold is the tissue_fraction quantile of the blob field, read on a ≤ 512×512 sample grid
        # so it costs the same for any slide size.
        ys = np.unique(np.linspace(0, height - 1, min(height, 512)).astype(np.int64))
        xs = np.unique(np.linspace(0, width - 1, min(width, 512)).astype(np.int64))
        if tissue_fraction <= 0:
            threshold = -1.0
        elif tissue_fraction >= 1:
            threshold = 2.0
        else:
            threshold = float(np.quantile(_field(blob_key, blob_cell, ys, xs), tissue_fraction))
        gauss = np.random.default_rng(noise_key).normal(0, _NOISE_SIGMA, (period, period, 3))
        noise = (np.clip(np.rint(gauss), -_NOISE_CLIP, _NOISE_CLIP) + _BACKGROUND).astype(np.uint8)
        colours = np.stack([_BACKGROUND, _STROMA, _NUCLEUS]).astype(np.int64)
        delta = (np.rint(stain * (colours - _BACKGROUND.astype(np.int64))).astype(np.int64) % 256).astype(np.uint8)
        return cls(blob_key, nucleus_key, blob_cell, threshold, noise, delta)

    def labels(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint8 (y1-y0, x1-x0) in pixels [y0, y1) × [x0, x1): 0 background, 1 stroma, 2 nucleus."""
        ys, xs = np.arange(y0, y1), np.arange(x0, x1)
        tissue = _field(self.blob_key, self.blob_cell, ys, xs) < self.threshold
        labels = tissue.view(np.uint8).copy()
        cols = np.flatnonzero(tissue.any(axis=0))
        if cols.size:  # the nucleus field is the costly part: evaluate it over tissue columns only
            a, b = cols[0], cols[-1] + 1
            nuclei = _field(self.nucleus_key, _NUCLEUS_CELL, ys, xs[a:b]) > _NUCLEUS_LEVEL
            labels[:, a:b] += nuclei & tissue[:, a:b]
        return labels

    def paint(self, labels: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """uint8 (h, w, 3) RGB for `labels` (h, w) whose top-left pixel is (x0, y0)."""
        h, w = labels.shape
        period = self.noise.shape[0]
        rows = self.noise[np.arange(y0, y0 + h) % period]
        off = x0 % period
        out = np.tile(rows, (1, -(-(off + w) // period), 1))[:, off:off + w]
        # uint8 arithmetic wraps, so background + (colour − background) mod 256 lands exactly on colour + noise
        out += np.take(self.delta, labels, axis=0)
        return out


def _check_fraction(tissue_fraction: float, name: str = "tissue_fraction") -> None:
    if not 0 <= tissue_fraction <= 1:
        raise HistofastError(f"{name}={tissue_fraction}: must lie in [0, 1]")


def tissue_image(height: int, width: int, seed: int = 0, tissue_fraction: float = 0.5,
                 stain: float = 1.0) -> np.ndarray:
    """An H&E-like RGB image: tissue blobs of pink stroma with purple nuclei on a white background.

    It is level 0 of ``write_slide(path, width, height, seed, tissue_fraction)`` (default tile_size 256)
    before JPEG.

    Args:
        height, width: pixels.
        seed: the same seed gives the same image.
        tissue_fraction: about this share of the area is tissue, the rest white background.
        stain: how strongly tissue is stained, in [0, 1]: 1 the usual H&E colours, 0.2 a faint section (its
            stroma just past OpenCV's white S bound), 0 none (tissue as white as the background).
    Returns:
        uint8 (height, width, 3) RGB.
    """
    if height < 1 or width < 1:
        raise HistofastError(f"height={height}, width={width}: must be positive")
    _check_fraction(tissue_fraction)
    _check_fraction(stain, "stain")
    model = _Tissue.build(height, width, seed, tissue_fraction, period=256, stain=stain)
    return model.paint(model.labels(0, height, 0, width), 0, 0)


# --- write_slide ---------------------------------------------------------------------------------------------

def _encode(tile: np.ndarray, quality: int) -> bytes:
    # RGB in, RGB stored (Adobe marker, no YCbCr transform, no subsampling): what PhotometricInterpretation=RGB
    # promises, so OpenSlide (libjpeg told "RGB") and a plain imagecodecs.jpeg8_decode give the same pixels.
    return imagecodecs.jpeg8_encode(tile, quality, colorspace="RGB", outcolorspace="RGB")


def _padded(tile: np.ndarray, size: int) -> np.ndarray:
    """Edge tiles grown to size×size by repeating their last row/column (TIFF tiles are always whole)."""
    h, w = tile.shape[:2]
    if h == size and w == size:
        return tile
    return np.pad(tile, ((0, size - h), (0, size - w), (0, 0)), mode="edge")


def _level_sizes(width: int, height: int, min_level_size: int) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level: level 0, then ÷4 while the smaller side stays ≥ min_level_size."""
    sizes = [(width, height)]
    while min(sizes[-1]) // 4 >= min_level_size:
        sizes.append((sizes[-1][0] // 4, sizes[-1][1] // 4))
    return sizes


class _SlideTiles:
    """JPEG tiles, in TIFF order, encoded on a thread pool while the caller generates the next band."""

    def __init__(self, pool: ThreadPoolExecutor, tile_size: int, quality: int) -> None:
        self.pool, self.tile_size, self.quality = pool, tile_size, quality

    def _submit(self, tile: np.ndarray) -> Future:
        return self.pool.submit(_encode, _padded(tile, self.tile_size), self.quality)

    def level0(self, model: _Tissue, width: int, height: int, quarter: np.ndarray) -> Iterator[bytes]:
        """Level 0, one tile row at a time; fills `quarter` (uint8 (H//4, W//4, 3)) with its 4×4 area mean.

        Memory holds at most two bands of tiles (2 · tile_size · width · 3 bytes) plus `quarter`.
        """
        t = self.tile_size
        padded_width = -(-width // t) * t
        background = self.pool.submit(_encode, model.noise, self.quality)  # every tissue-free tile looks like this
        pending: deque[list[Future]] = deque()
        for y0 in range(0, height, t):
            labels = model.labels(y0, y0 + t, 0, padded_width)
            band = model.paint(labels, y0, 0)
            small = _block_mean(band, 4)
            rows = min(t // 4, quarter.shape[0] - y0 // 4)
            quarter[y0 // 4:y0 // 4 + rows] = small[:rows, :quarter.shape[1]]
            tissue = labels.reshape(t, -1, t).any(axis=(0, 2))
            pending.append([self._submit(band[:, k * t:(k + 1) * t]) if tissue[k] else background
                            for k in range(len(tissue))])
            if len(pending) > 1:
                yield from (f.result() for f in pending.popleft())
        while pending:
            yield from (f.result() for f in pending.popleft())

    def image(self, image: np.ndarray) -> Iterator[bytes]:
        """An in-memory level (uint8 (h, w, 3)), tile by tile in row-major order."""
        t = self.tile_size
        futures = [self._submit(image[y:y + t, x:x + t])
                   for y in range(0, image.shape[0], t) for x in range(0, image.shape[1], t)]
        return (f.result() for f in futures)


def _description(width: int, height: int, tile_size: int, quality: int, size: tuple[int, int] | None) -> str:
    """Aperio's ImageDescription: level 0 says its own size; other pages add "-> w×h" (their own size)."""
    text = f"{_APERIO_HEAD}\r\n{width}x{height} [0,0 {width}x{height}] ({tile_size}x{tile_size})"
    if size is not None:
        text += f" -> {size[0]}x{size[1]}"
    return text + f" JPEG/RGB Q={quality}"


def _page_options(description: str, mpp: float, downsample: float, quality: int) -> dict:
    """tifffile.write options shared by every page: RGB JPEG, no subsampling, Aperio description only.

    Tiled pages get pre-encoded tiles and ignore the quality; the stripped thumbnail is encoded by tifffile.
    """
    pixels_per_cm = 1e4 / (mpp * downsample)
    return dict(
        photometric="rgb", compression="jpeg", subsampling=(1, 1),
        compressionargs={"outcolorspace": "rgb", "level": quality},
        description=description, metadata=None, software=False,
        resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER",
    )


def _check_slide_args(width: int, height: int, tissue_fraction: float, tile_size: int, quality: int,
                      mpp: float, magnification: float, min_level_size: int, threads: int | None) -> None:
    check_count(width, "width")
    check_count(height, "height")
    _check_fraction(tissue_fraction)
    if check_count(tile_size, "tile_size") % 16:
        raise HistofastError(f"tile_size={tile_size}: must be a positive multiple of 16")
    if not 1 <= check_count(quality, "quality") <= 100:
        raise HistofastError(f"quality={quality}: must lie in 1..100")
    if not mpp > 0:
        raise HistofastError(f"mpp={mpp}: must be > 0 (µm per level-0 pixel)")
    if not magnification > 0:
        raise HistofastError(f"magnification={magnification}: must be > 0")
    check_count(min_level_size, "min_level_size")
    if threads is not None:
        check_count(threads, "threads")


def write_slide(
    path: str | os.PathLike,
    width: int,
    height: int,
    seed: int = 0,
    tissue_fraction: float = 0.5,
    *,
    tile_size: int = 256,
    quality: int = 90,
    mpp: float = 0.25,
    magnification: float = 40,
    min_level_size: int = 1024,
    stain: float = 1.0,
    threads: int | None = None,
    **deprecated: Any,
) -> pathlib.Path:
    """Write a synthetic Aperio-style SVS: a pyramidal, tiled, JPEG-compressed TIFF that OpenSlide opens.

    Pages: level 0 (width × height, tiled), a stripped thumbnail (longer side ≤ 1024, OpenSlide's
    associated image "thumbnail", not a level), then levels downsampled 4×, 16×, ... while their smaller
    side stays ≥ min_level_size. Every image is PhotometricInterpretation RGB, baseline JPEG stored in RGB
    (no YCbCr, no subsampling), each tile a complete JPEG (no JPEGTables). Level 0 is ``tissue_image`` of
    the same size, seed and tissue_fraction when tile_size is 256 (its pixel noise repeats every tile_size
    pixels), generated one tile row at a time; lower levels are 4×4 area means. Memory peaks near
    width·height·3/16 bytes (the 4× level) plus a few tile rows of working arrays, never the full level 0.
    The file is written under a temporary name in the same directory and renamed into place, so `path` is
    either complete or untouched.

    Args:
        path: destination file (``.svs`` or ``.tif``); its directory must exist.
        width, height: level-0 pixels.
        seed: the same arguments give the same file contents.
        tissue_fraction: share of the area that is tissue, in [0, 1].
        tile_size: pixels per tile side, a positive multiple of 16 (Aperio uses 240 or 256).
        quality: JPEG quality 1..100.
        mpp: µm per level-0 pixel (OpenSlide ``openslide.mpp-x``/``-y``).
        magnification: objective power (``openslide.objective-power``).
        min_level_size: pixels; no level below level 0 has a smaller side shorter than this.
        stain: how strongly tissue is stained, as for ``tissue_image``.
        threads: JPEG encoder threads; default ``os.cpu_count()`` (``workers=``, its 0.x name, still works for
            this release with a ``FutureWarning``).
    Returns:
        `path` as a ``pathlib.Path``.
    """
    threads = renamed_keyword(deprecated, "write_slide", "workers", "threads", threads)
    if deprecated:
        raise TypeError(f"write_slide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
    _check_slide_args(width, height, tissue_fraction, tile_size, quality, mpp, magnification, min_level_size,
                      threads)
    _check_fraction(stain, "stain")
    path = pathlib.Path(path)
    sizes = _level_sizes(width, height, min_level_size)
    model = _Tissue.build(height, width, seed, tissue_fraction, period=tile_size, stain=stain)
    quarter = np.empty((max(1, height // 4), max(1, width // 4), 3), np.uint8)
    description = (_description(width, height, tile_size, quality, None)
                   + f"|AppMag = {magnification:g}|MPP = {mpp:g}")
    bigtiff = width * height * 3 > 2**32 - 2**25  # tifffile's own rule for raw data: safe for any JPEG size
    with atomic_path(path) as tmp, ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool, \
            tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        tiles = _SlideTiles(pool, tile_size, quality)
        tif.write(tiles.level0(model, width, height, quarter), shape=(height, width, 3), dtype=np.uint8,
                  tile=(tile_size, tile_size), **_page_options(description, mpp, 1.0, quality))
        levels = [quarter]
        for _ in sizes[2:]:
            levels.append(_block_mean(levels[-1], 4))
        thumbnail = _thumbnail(levels)
        thumb_size = (thumbnail.shape[1], thumbnail.shape[0])
        tif.write(thumbnail,
                  **_page_options(_description(width, height, tile_size, quality, thumb_size), mpp,
                                  width / thumb_size[0], quality))
        for (w, h), level in zip(sizes[1:], levels):
            tif.write(tiles.image(level[:h, :w]), shape=(h, w, 3), dtype=np.uint8, tile=(tile_size, tile_size),
                      **_page_options(_description(width, height, tile_size, quality, (w, h)), mpp, width / w,
                                     quality))
    return path


def _thumbnail(levels: list[np.ndarray]) -> np.ndarray:
    """A ≤ 1024-pixel-side area mean of the smallest level that is still at least that big (or the 4× level)."""
    source = levels[0]
    for level in levels[1:]:
        if max(level.shape[:2]) >= _THUMBNAIL_SIDE:
            source = level
    factor = -(-max(source.shape[:2]) // _THUMBNAIL_SIDE)
    return _block_mean(source, factor) if factor > 1 else source


# --- write_region_dataset ------------------------------------------------------------------------------------

def _nuclei(key: int, ys: np.ndarray, xs: np.ndarray, spacing: int, radius: tuple[float, float],
            density: float, elongation: float = 1.3) -> np.ndarray:
    """Elliptic nuclei on a jittered square grid: at most one per spacing×spacing cell, wholly inside it.

    Args:
        ys, xs: ascending int64 pixel coordinates.
        spacing: cell side, pixels. radius: (min, max) mean radius, pixels. density: share of cells with a
        nucleus. elongation: largest ratio of the long to the short axis.
    Returns:
        bool (len(ys), len(xs)).
    """
    ci, cj = ys // spacing, xs // spacing
    rows, cols = np.arange(ci[0], ci[-1] + 1), np.arange(cj[0], cj[-1] + 1)
    u = [_lattice(_key(key, k), rows, cols) for k in range(6)]
    r = radius[0] + (radius[1] - radius[0]) * u[0]
    stretch = np.sqrt(1 + (elongation - 1) * u[1])
    a = np.minimum(r * stretch, spacing / 2 - 0.5)  # semi-axes; the long one keeps the nucleus in its cell
    b = r / stretch
    cy = rows[:, None] * spacing + a + (spacing - 2 * a) * u[2]
    cx = cols[None, :] * spacing + a + (spacing - 2 * a) * u[3]
    angle = np.pi * u[4]
    present = u[5] < density
    inv_a2 = np.where(present, 1 / a**2, np.inf).astype(np.float32)  # an absent nucleus contains no pixel
    inv_b2 = np.where(present, 1 / b**2, np.inf).astype(np.float32)
    at = (ci - rows[0])[:, None], (cj - cols[0])[None, :]
    f32 = np.float32
    dy = ys[:, None].astype(f32) - cy.astype(f32)[at]
    dx = xs[None, :].astype(f32) - cx.astype(f32)[at]
    cos, sin = np.cos(angle).astype(f32)[at], np.sin(angle).astype(f32)[at]
    along, across = dx * cos + dy * sin, dy * cos - dx * sin
    with np.errstate(invalid="ignore"):  # absent nuclei: 0 · inf = NaN, and NaN < 1 is False, as wanted
        return along * along * inv_a2[at] + across * across * inv_b2[at] < 1


def _glands(key: int, ys: np.ndarray, xs: np.ndarray, spacing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adenocarcinoma glands on a jittered grid: a lumen ringed by epithelium with a row of nuclei.

    Returns:
        bool (len(ys), len(xs)) masks: lumen, epithelium, nuclei (nuclei ⊂ epithelium).
    """
    ci, cj = ys // spacing, xs // spacing
    rows, cols = np.arange(ci[0], ci[-1] + 1), np.arange(cj[0], cj[-1] + 1)
    u = [_lattice(_key(key, k), rows, cols) for k in range(6)]
    outer = spacing * (0.33 + 0.12 * u[0])
    inner = outer * (0.45 + 0.2 * u[1])
    present = u[2] < 0.95
    outer, inner = np.where(present, outer, 0), np.where(present, inner, 0)
    margin = spacing / 2 - outer
    cy = rows[:, None] * spacing + spacing / 2 + margin * (2 * u[3] - 1)
    cx = cols[None, :] * spacing + spacing / 2 + margin * (2 * u[4] - 1)
    phase = 2 * np.pi * u[5]
    mid = (inner + outer) / 2
    count = np.maximum(np.round(2 * np.pi * mid / 11), 1)  # nuclei about 11 px apart along the ring
    at = (ci - rows[0])[:, None], (cj - cols[0])[None, :]
    f32 = np.float32  # per pixel in float32: twice the speed of float64, ample for pixel distances
    dy = ys[:, None].astype(f32) - cy.astype(f32)[at]
    dx = xs[None, :].astype(f32) - cx.astype(f32)[at]
    dist = np.hypot(dy, dx)
    lumen = dist < inner.astype(f32)[at]
    epithelium = ~lumen & (dist < outer.astype(f32)[at])
    # The nearest of `count` nuclei evenly spaced on the ring's mid-line, by angle.
    step, start, radius = (2 * np.pi / count).astype(f32)[at], phase.astype(f32)[at], mid.astype(f32)[at]
    theta = start + np.round((np.arctan2(dy, dx) - start) / step) * step
    ny, nx = dy - radius * np.sin(theta), dx - radius * np.cos(theta)
    nuclei = epithelium & (ny * ny + nx * nx < 4.5**2)
    return lumen, epithelium, nuclei


# Label colours of a region image, RGB, before the per-patient stain shift.
_WHITE, _PINK, _CYTOPLASM, _PURPLE = 0, 1, 2, 3
_REGION_PALETTE = np.array([[240, 238, 242], [226, 152, 190], [222, 170, 210], [92, 58, 148]], np.float32)


def _texture_norm(key: int, ys: np.ndarray, xs: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Normal lung: stroma with sparse, small, regular nuclei."""
    labels = np.full((len(ys), len(xs)), _PINK, np.uint8)
    labels[_nuclei(key, ys, xs, round(34 * jitter[0]), (3.0, 4.5), 0.6, 1.2)] = _PURPLE
    return labels


def _texture_sclc(key: int, ys: np.ndarray, xs: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Small-cell carcinoma: small dark nuclei crowded edge to edge (two offset grids), scant cytoplasm."""
    labels = np.full((len(ys), len(xs)), _CYTOPLASM, np.uint8)
    spacing = round(11 * jitter[0])
    crowded = _nuclei(_key(key, 0), ys, xs, spacing, (4.0, 5.5), 0.95, 1.4)
    crowded |= _nuclei(_key(key, 1), ys + spacing // 2, xs + spacing // 2, spacing, (3.5, 5.0), 0.6, 1.4)
    labels[crowded] = _PURPLE
    return labels


def _texture_sc(key: int, ys: np.ndarray, xs: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Squamous carcinoma: nests (sheets) of cells with large nuclei and pale cytoplasm, in sparse stroma."""
    nests = _field(_key(key, 0), 90 * jitter[0], ys, xs) > 0.3  # nests cover ~80 % of the area
    labels = np.where(nests, _CYTOPLASM, _PINK).astype(np.uint8)
    large = _nuclei(_key(key, 1), ys, xs, round(28 * jitter[1]), (7.0, 10.0), 0.85, 1.3)
    sparse = _nuclei(_key(key, 2), ys, xs, 36, (3.0, 4.5), 0.5, 1.2)
    labels[np.where(nests, large, sparse)] = _PURPLE
    return labels


def _texture_adc(key: int, ys: np.ndarray, xs: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Adenocarcinoma: glands, each a white lumen in a ring of epithelium lined with nuclei."""
    labels = np.full((len(ys), len(xs)), _PINK, np.uint8)
    labels[_nuclei(_key(key, 0), ys, xs, 40, (3.0, 4.5), 0.4, 1.2)] = _PURPLE
    lumen, epithelium, nuclei = _glands(_key(key, 1), ys, xs, round(84 * jitter[0]))
    labels[epithelium] = _CYTOPLASM
    labels[lumen] = _WHITE
    labels[nuclei] = _PURPLE
    return labels


_TEXTURES: dict[str, Callable[[int, np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "NORM": _texture_norm, "SCLC": _texture_sclc, "SC": _texture_sc, "ADC": _texture_adc,
}


def region_image(label: str, size: int, seed: int = 0, stain: np.ndarray | None = None) -> np.ndarray:
    """One size×size H&E-like region of class `label` (NORM, SCLC, SC or ADC).

    Texture scale is fixed in pixels (nuclei 3–10 px in radius), so any crop shows its class.

    Args:
        stain: optional float (4, 3) RGB offsets added to the white, stroma, cytoplasm and nucleus colours.
    Returns:
        uint8 (size, size, 3) RGB.
    """
    if label not in _TEXTURES:
        raise HistofastError(f"label={label!r}: must be one of {sorted(_TEXTURES)}")
    rng = np.random.default_rng(_key(seed, 4))
    key, jitter = int(rng.integers(1 << 62)), rng.uniform(0.9, 1.1, 2)  # each image its own scale, ±10 %
    coords = np.arange(size, dtype=np.int64)
    labels = _TEXTURES[label](key, coords, coords, jitter)
    palette = _REGION_PALETTE + (0 if stain is None else stain)
    shade = 0.94 + 0.1 * _field(_key(key, 9), 48.0, coords, coords)  # uneven staining over ~50 px
    image = palette.astype(np.float32)[labels]
    image *= shade[..., None]
    noise = rng.standard_normal((size, size, 3), dtype=np.float32)  # float32 draws: half the time of float64
    noise *= _NOISE_SIGMA
    image += noise
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def write_region_dataset(
    directory: str | os.PathLike,
    classes: Sequence[str] = ("NORM", "SCLC", "SC", "ADC"),
    n_per_class: int = 8,
    size: int = 2560,
    seed: int = 0,
    *,
    patients_per_class: int | None = None,
    fmt: str = "png",
) -> pathlib.Path:
    """Write a class-folder dataset of H&E-like regions, ``directory/<class>/<class>_<iii>.png``, and a manifest.

    Classes differ in texture (see ``region_image``): NORM sparse small regular nuclei; SCLC small dark
    nuclei crowded edge to edge; SC nests of large nuclei in pale cytoplasm; ADC glands with white lumens
    lined by nuclei. Images of one patient share a stain shift; patients never span classes, so a
    patient-disjoint split is possible. ``directory/manifest.csv`` has columns ``path,label,patient`` (path
    relative to `directory`, '/'-separated) and is written last; every file is written atomically.

    Args:
        directory: created if missing.
        classes: class names, each one of NORM, SCLC, SC, ADC.
        n_per_class: images per class.
        size: image side, pixels.
        seed: the same arguments give the same files.
        patients_per_class: default ``max(1, n_per_class // 4)``; images are dealt to patients in turn.
        fmt: "png" (lossless RGB) or "jpg" (JPEG quality 95).
    Returns:
        `directory` as a ``pathlib.Path``.
    """
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes) or any(c not in _TEXTURES for c in classes):
        raise HistofastError(f"classes={classes!r}: must be distinct names among {sorted(_TEXTURES)}")
    check_count(n_per_class, "n_per_class")
    check_count(size, "size")
    patients = max(1, n_per_class // 4) if patients_per_class is None else patients_per_class
    if not 1 <= check_count(patients, "patients_per_class") <= n_per_class:
        raise HistofastError(f"patients_per_class={patients}: must lie in 1..n_per_class={n_per_class}")
    if fmt not in IMAGE_FORMATS:
        raise HistofastError(f"fmt={fmt!r}: must be one of {', '.join(IMAGE_FORMATS)}")
    root = pathlib.Path(directory)
    suffix = f".{fmt}"
    rows = []
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        kind = list(_TEXTURES).index(label)  # by name, so a class looks the same whatever else is listed
        stains = [np.random.default_rng(_key(seed, 5, kind, p)).normal(0, 6, (4, 3)) for p in range(patients)]
        for i in range(n_per_class):
            patient = i % patients
            image = region_image(label, size, _key(seed, 6, kind, i), stains[patient])
            name = f"{label}/{label}_{i:03d}{suffix}"
            atomic_write(root / name, encode_image(image, fmt, quality=95, png_level=1))
            rows.append((name, label, f"{label}-P{patient:02d}"))  # ids independent of the classes order
    with atomic_open(root / "manifest.csv", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "label", "patient"))
        writer.writerows(rows)
    return root
