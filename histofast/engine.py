"""The sample engine both ``Pipeline`` backends run: per-slide tile grids (scored once), an epoch
plan that is a pure function of (seed, epoch, shard, streams), and streams that decode blocks of
slide area ahead in a thread pool and cut their samples into batches with ``_C.augment``.

Why blocks: a tile read on its own decodes every stored tile it touches, four times over at stride
tile/2. A block (about ``BLOCK_PIXELS`` square of grid area) is decoded once for all its samples,
so only the thin overlap between blocks is decoded twice; shuffling permutes blocks across all
slides and then samples within a window of ``WINDOW_BLOCKS`` blocks."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator, Sequence

import numpy as np

from . import ops
from .augment import Augment
from .errors import HistofastError, check_count
from .grid import BatchBuffers, TileGrid, check_grid_args, tile_grid
from .io import Slide, open_slide
from .ops import DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER
from .sources import NO_LABEL, SlideSource, class_index

log = logging.getLogger("histofast")

BLOCK_PIXELS = 4096  # grid pixels per block side: overlap (tile − stride + 2·reach) is small against it
WINDOW_BLOCKS = 2  # shuffle mixes the samples of this many blocks (memory: ~50 MB of pixels each)
OPEN_SLIDES = 16  # slides a stream keeps open (opening an SVS checks one tile per level)
MODES = ("tiles", "images")
FIELDS = ("image", "label", "slide", "x", "y")


@dataclass(frozen=True, eq=False)
class Samples:
    """What one epoch draws from: the slides, their labels and scored grids, and the batch format.

    A sample is a kept grid cell: a tile (``mode="tiles"``) or an image window whose patch grid is
    stacked (``mode="images"``). Sample ``offsets[i] + k`` is the k-th kept cell of slide i (row-major);
    that number is also its augmentation counter, so a sample's draw does not depend on the order.
    """

    slides: list[str]
    labels: np.ndarray  # int64 (slides,), NO_LABEL when unlabelled
    classes: list[str]
    grids: list[TileGrid | None]  # None: the slide failed while being scored
    mode: str
    tile_size: int  # output patch side (tiles: the tile), grid pixels
    stride: int  # images: patch stride inside a window
    augment: Augment | None
    batch_size: int
    dtype: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    failed: dict[str, str] = field(default_factory=dict)  # slide path -> reason, filled while scoring

    # Derived once (the grids never change): the streams index these per block and per batch.
    @cached_property
    def counts(self) -> np.ndarray:
        """int64 (slides,) kept samples per slide."""
        return np.array([0 if g is None else len(g) for g in self.grids], np.int64)

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64 (slides + 1,): slide i's samples are numbered ``offsets[i] .. offsets[i + 1] - 1``."""
        return np.concatenate([[0], np.cumsum(self.counts)])

    @cached_property
    def owner(self) -> np.ndarray:
        """int64 (N,) each sample's slide."""
        return np.repeat(np.arange(len(self.grids)), self.counts)

    @cached_property
    def level_coords(self) -> np.ndarray:
        """int64 (N, 2) each sample's grid-pixel (x, y) in its slide's grid."""
        return _stacked([g.level_coords for g in self.grids if g is not None])

    @cached_property
    def coords(self) -> np.ndarray:
        """int64 (N, 2) each sample's level-0 (x, y)."""
        return _stacked([g.coords for g in self.grids if g is not None])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        t = self.tile_size
        if self.mode == "tiles":
            return (3, t, t)
        side = self.grids_sample_size
        n = ops.grid_shape(side, side, t, self.stride)
        return (n[0] * n[1], 3, t, t)

    @cached_property
    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Every sample's block, and the samples in block order.

        Returns:
            ``block_of`` int64 (N,) indexed by sample number, and ``order`` int64 (N,): sample numbers
            grouped by block (blocks numbered slide by slide, row-major), row-major within a block."""
        block_of, base = [], 0
        for grid in self.grids:
            if grid is None or len(grid) == 0:
                continue
            per = max(1, (BLOCK_PIXELS - grid.tile_size) // grid.stride + 1)  # cells per block side
            rows, cols = np.nonzero(grid.keep)
            key = (rows // per) * (grid.shape[1] // per + 1) + cols // per
            _, local = np.unique(key, return_inverse=True)
            block_of.append(base + local.reshape(-1))
            base += local.max() + 1
        block_of = np.concatenate(block_of).astype(np.int64)
        assert len(block_of) == self.offsets[-1]
        return block_of, np.argsort(block_of, kind="stable")

    @cached_property
    def grids_sample_size(self) -> int:
        """Side of one sample's cell in the grids (the tile, or the image window)."""
        return next(g.tile_size for g in self.grids if g is not None)


def _stacked(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.empty((0, 2), np.int64)


def build_samples(
    items: Sequence[SlideSource | TileGrid],
    *,
    classes: Sequence[str] | None = None,
    tile_size: int = 512,
    stride: int | None = None,
    level: int | None = None,
    mpp: float | None = None,
    magnification: float | None = None,
    hsv_lower: Sequence[int] = DEFAULT_HSV_LOWER,
    hsv_upper: Sequence[int] = DEFAULT_HSV_UPPER,
    max_white: float = 0.5,
    mode: str = "tiles",
    image_size: int = 2560,
    augment: Augment | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    progress: bool = True,
) -> Samples:
    """Check the arguments, then score every slide's grid once (a slide that fails is logged and left out).

    ``mode="tiles"``: the grid is ``tile_size`` at ``stride``. ``mode="images"``: the grid is windows of
    ``image_size`` at stride ``image_size``, each cut into patches of ``tile_size`` at ``stride``."""
    if mode not in MODES:
        raise HistofastError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    stride = tile_size if stride is None else stride
    check_grid_args(tile_size, stride, hsv_lower, hsv_upper, max_white)
    check_count(batch_size, "batch_size")
    if augment is not None and not isinstance(augment, Augment):
        raise TypeError(f"augment: expected a histofast.Augment or None, got {type(augment).__name__}")
    mean, std = ops.check_batch_format(dtype, "NCHW", mean, std)
    cell, cell_stride = tile_size, stride
    if mode == "images":
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < tile_size:
            raise HistofastError(f"image_size={image_size!r}: must be an integer ≥ tile_size={tile_size} (pixels)")
        cell = cell_stride = int(image_size)
    grids: list[TileGrid | None] = []
    failed: dict[str, str] = {}
    sources = [s for s in items if isinstance(s, SlideSource)]
    given = [g for g in items if isinstance(g, TileGrid)]
    if given and (sources or mode != "tiles"):
        raise HistofastError("source: TileGrids cannot be mixed with paths, and only work with mode='tiles'")
    from tqdm.auto import tqdm

    for item in tqdm(items, desc="scoring slides", unit="slide", disable=not progress or len(items) < 2):
        if isinstance(item, TileGrid):
            grids.append(item)
            continue
        try:
            grids.append(tile_grid(item.path, cell, cell_stride, level=level, mpp=mpp, magnification=magnification,
                                   hsv_lower=hsv_lower, hsv_upper=hsv_upper, max_white=max_white))
        except (HistofastError, OSError) as e:  # a bad slide never stops the others
            log.warning("skipping %s: %s", item.path, e)
            failed[item.path] = str(e)
            grids.append(None)
    if given:
        slides, labels, names = [g.slide_path for g in given], np.full(len(given), NO_LABEL, np.int64), []
        tile_size = given[0].tile_size
    else:
        slides = [s.path for s in sources]
        names, labels = class_index(sources, classes)
    samples = Samples(slides, labels, names, grids, mode, int(tile_size), int(stride), augment, int(batch_size),
                      dtype, mean, std, failed)
    if samples.counts.sum() == 0:
        raise HistofastError(f"no tissue {mode} in {len(items)} slides (max_white={max_white}; "
                             f"{len(failed)} slides failed)")
    return samples


# ----------------------------------------------------------------------------------- epoch plan


@dataclass(frozen=True)
class Window:
    """Samples of a stream cut from a few blocks: ``ids`` in output order and each one's ``block``."""

    ids: np.ndarray  # int64 (n,) sample numbers
    blocks: np.ndarray  # int64 (n,) block numbers


def check_shard(shard: Any) -> tuple[int, int]:
    """``(rank, world_size)`` with 0 ≤ rank < world_size."""
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise HistofastError(f"shard={shard!r}: expected (rank, world_size)") from None
    if world <= 0 or not 0 <= rank < world:
        raise HistofastError(f"shard={tuple(shard)}: rank must lie in [0, world_size) and world_size ≥ 1")
    return rank, world


def shard_size(total: int, shard: tuple[int, int]) -> int:
    """Samples in ``shard`` when ``total`` are dealt out (shards differ by at most one)."""
    rank, world = shard
    return (rank + 1) * total // world - rank * total // world


def batch_count(samples: Samples, shard: tuple[int, int], drop_last: bool) -> int:
    n, b = shard_size(int(samples.offsets[-1]), shard), samples.batch_size
    return n // b if drop_last else -(-n // b)


def plan(samples: Samples, epoch: int, shard: tuple[int, int], streams: int, stream: int, *,
         shuffle: bool, seed: int, drop_last: bool) -> list[Window]:
    """The windows stream ``stream`` of ``streams`` cuts in ``epoch`` for ``shard``.

    The epoch's sequence is the blocks in order (or permuted by (seed, epoch) when shuffling),
    each block's samples row-major; shard r of w takes its r-th contiguous share; the shard's batches
    are dealt to streams in contiguous runs (only the last stream's last batch can be partial);
    with ``shuffle`` each window's samples are permuted. Batches are then taken round-robin over
    the streams (``merge``)."""
    block_of, order = samples.blocks
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        first = np.flatnonzero(np.r_[True, np.diff(block_of[order]) != 0])
        sizes = np.diff(np.r_[first, len(order)])
        perm = rng.permutation(len(first))
        order = np.concatenate([order[first[b] : first[b] + sizes[b]] for b in perm])
    rank, world = shard
    total = len(order)
    mine = order[rank * total // world : (rank + 1) * total // world]
    b = samples.batch_size
    n_batches = batch_count(samples, shard, drop_last)
    mine = mine[: min(len(mine), n_batches * b)]
    lo, hi = stream * n_batches // streams * b, (stream + 1) * n_batches // streams * b
    mine = mine[lo:hi]
    windows, start = [], 0
    rng = np.random.default_rng([seed, epoch, rank, world, streams, stream])
    starts = np.flatnonzero(np.r_[True, np.diff(block_of[mine]) != 0]) if len(mine) else np.array([], np.int64)
    for k in range(0, len(starts), WINDOW_BLOCKS):
        stop = starts[k + WINDOW_BLOCKS] if k + WINDOW_BLOCKS < len(starts) else len(mine)
        ids = mine[start:stop]
        if shuffle:
            ids = ids[rng.permutation(len(ids))]
        windows.append(Window(ids, block_of[ids]))
        start = stop
    return windows


def merge(streams: Sequence[Iterator[Any]]) -> Iterator[Any]:
    """Round-robin over iterators, dropping each as it ends (the order of a DataLoader's workers)."""
    live = deque(streams)
    while live:
        it = live.popleft()
        try:
            item = next(it)
        except StopIteration:
            continue
        live.append(it)
        yield item


# ---------------------------------------------------------------------------------------- streams


@dataclass
class _Region:
    """A decoded block: ``pixels`` uint8 (h, w, 3) (on the stream's device) at view pixel (x0, y0)."""

    slide: int
    x0: int
    y0: int
    pixels: Any = None
    error: BaseException | None = None


class Stream:
    """Runs one stream's windows: reads each window's blocks ahead, then cuts batches.

    Args:
        samples: the epoch's samples.
        windows: from ``plan``.
        epoch: the augmentation epoch.
        pool: decode threads (shared by streams of one process).
        device: "cpu" or "cuda[:i]": where the regions go and the batches are made.
        drop_last: drop a final partial batch (one left short by a failing slide, too).
        allocate: ``allocate(shape, dtype) -> torch tensor`` for CPU batch images (e.g. in shared memory);
            default: arrays recycled once nobody holds them (``watch`` of them at a time).
    Yields:
        dicts of ``FIELDS``: ``image`` a torch tensor on ``device``, float/uint8 (B, 3, T, T) or
        (B, P, 3, t, t); numpy ``label``, ``slide``
        (index into ``samples.slides``), ``x``, ``y`` (level-0 pixels of the tile or window) int64 (B,).
    """

    def __init__(self, samples: Samples, windows: list[Window], epoch: int, pool: ThreadPoolExecutor,
                 device: str = "cpu", drop_last: bool = False, allocate: Any = None, watch: int = 2) -> None:
        self.samples, self.windows, self.epoch, self.pool = samples, windows, epoch, pool
        self.device, self.drop_last = device, drop_last
        self.allocate = allocate
        # Fresh 200 MB batches cost their page faults: a third of the CPU time of a float32 epoch here.
        self._buffers = BatchBuffers((samples.batch_size, *samples.sample_shape), samples.dtype, "cpu", watch)
        self._slides: OrderedDict[int, Slide] = OrderedDict()
        self._skip: set[int] = set()  # slides that failed in this stream: the rest of them is skipped
        size = samples.grids_sample_size
        self._reach = samples.augment.reach(size) if samples.augment is not None else 0
        self._patches = None
        if samples.mode == "images":
            rows, cols = ops.grid_shape(size, size, samples.tile_size, samples.stride)
            grid = np.indices((rows, cols)).reshape(2, -1) * samples.stride
            self._patches = np.stack([grid[1], grid[0]], 1).astype(np.int64)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._batches()
        finally:
            for slide in self._slides.values():
                slide.close()
            self._slides.clear()

    def _batches(self) -> Iterator[dict[str, Any]]:
        b = self.samples.batch_size
        ahead: deque = deque()
        pending: list[tuple[np.ndarray, list[_Region]]] = []
        waiting = k = 0  # samples in pending; windows submitted
        while k < len(self.windows) or ahead:
            while k < len(self.windows) and len(ahead) < 2:  # this window and the next are decoding
                ahead.append(self._read(self.windows[k]))
                k += 1
            window, regions, futures = ahead.popleft()
            ids, region_of = self._finish(window, regions, futures)
            pending.append((ids, region_of))
            waiting += len(ids)
            while waiting >= b:
                yield self._cut(pending, b)
                waiting -= b
        if waiting and not self.drop_last:
            yield self._cut(pending, waiting)

    def _slide(self, i: int) -> Slide:
        slide = self._slides.pop(i, None) or open_slide(self.samples.slides[i], workers=1)
        self._slides[i] = slide
        while len(self._slides) > OPEN_SLIDES:
            self._slides.popitem(last=False)[1].close()
        return slide

    def _read(self, window: Window) -> tuple[Window, dict[int, _Region], list[tuple[_Region, list[Future]]]]:
        """Submit the decode of every block the window's samples come from."""
        regions: dict[int, _Region] = {}
        futures = []
        size, reach = self.samples.grids_sample_size, self._reach
        for block in np.unique(window.blocks):
            ids = window.ids[window.blocks == block]
            i = int(self.samples.owner[ids[0]])
            region = regions[block] = _Region(i, 0, 0)
            grid = self.samples.grids[i]
            if i in self._skip:
                region.error = HistofastError("failed earlier in this epoch")
                continue
            try:
                view = grid.view(self._slide(i))
                xy = self.samples.level_coords[ids]
                width, height = view.dimensions
                x0, y0 = np.maximum(xy.min(0) - reach, 0)
                x1, y1 = np.minimum(xy.max(0) + size + reach, (width, height))
                region.x0, region.y0 = int(x0), int(y0)
                region.pixels = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
                jobs = view.jobs(int(x0), int(y0), int(x1 - x0), int(y1 - y0), region.pixels)
                futures.append((region, [self.pool.submit(job) for job in jobs]))
            except (HistofastError, OSError) as e:
                region.error = e
        return window, regions, futures

    def _finish(self, window: Window, regions: dict[int, _Region],
                futures: list[tuple[_Region, list[Future]]]) -> tuple[np.ndarray, list[_Region]]:
        """Wait for the window's blocks; drop the samples of a slide that failed (logged once)."""
        for region, fs in futures:
            for f in fs:
                try:
                    f.result()
                except Exception as e:  # any decoder's failure: this slide is skipped, the epoch goes on
                    region.error = region.error or e
        ok = np.ones(len(window.ids), bool)
        for block, region in regions.items():
            if region.error is None and region.pixels is not None and self.device != "cpu":
                import torch

                region.pixels = torch.from_numpy(region.pixels).to(self.device)
            if region.error is not None:
                if region.slide not in self._skip:
                    path = self.samples.slides[region.slide]
                    log.warning("skipping the rest of %s this epoch: %s", path, region.error)
                    self.samples.failed[path] = str(region.error)
                    self._skip.add(region.slide)
                ok &= window.blocks != block
        return window.ids[ok], [regions[int(bk)] for bk in window.blocks[ok]]

    def _cut(self, pending: list[tuple[np.ndarray, list[_Region]]], n: int) -> dict[str, Any]:
        """Cut the first ``n`` pending samples into one batch."""
        ids, regions = [], []
        while len(ids) < n:
            head_ids, head_regions = pending[0]
            take = min(n - len(ids), len(head_ids))
            ids.extend(head_ids[:take].tolist())
            regions.extend(head_regions[:take])
            if take == len(head_ids):
                pending.pop(0)
            else:
                pending[0] = (head_ids[take:], head_regions[take:])
        s = self.samples
        ids = np.asarray(ids, np.int64)
        slide = s.owner[ids]
        image = self._empty((n, *s.sample_shape))
        out = image.numpy() if self.device == "cpu" else image
        start = 0
        for k in range(1, n + 1):  # one augment call per run of samples from the same region
            if k < n and regions[k] is regions[start]:
                continue
            self._augment(regions[start], ids[start:k], out[start:k])
            start = k
        level0 = s.coords[ids]
        return {"image": image, "label": s.labels[slide], "slide": slide, "x": level0[:, 0].copy(), "y": level0[:, 1].copy()}

    def _empty(self, shape: tuple[int, ...]) -> Any:
        import torch

        if self.device != "cpu":
            return torch.empty(shape, dtype=getattr(torch, self.samples.dtype), device=self.device)
        if self.allocate is not None:
            return self.allocate(shape, self.samples.dtype)
        return torch.from_numpy(self._buffers.take()[: shape[0]])

    def _augment(self, region: _Region, ids: np.ndarray, out: Any) -> None:
        s = self.samples
        origins = s.level_coords[ids] - (region.x0, region.y0)
        params = s.augment.draw_at(ids, self.epoch) if s.augment is not None else {}
        if s.mode == "tiles":
            ops.augment(region.pixels, origins, s.tile_size, **params, mean=s.mean, std=s.std,
                        out_dtype=s.dtype, layout="NCHW", out=out)
            return
        size = s.grids_sample_size
        window = ops.augment(region.pixels, origins, size, **params, out_dtype="uint8", layout="NHWC")
        for j in range(len(ids)):  # then the window's patch grid, normalised, as (P, 3, t, t)
            ops.augment(window[j], self._patches, s.tile_size, mean=s.mean, std=s.std, out_dtype=s.dtype,
                        layout="NCHW", out=out[j])


def decode_threads(processes: int = 1) -> int:
    """Decode threads per process: the machine's cores shared by ``processes`` processes."""
    return max(1, (os.cpu_count() or 1) // max(1, processes))
