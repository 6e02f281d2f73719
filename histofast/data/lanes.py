"""Lanes: each runs one share of an epoch's plan, decoding the blocks of its windows ahead in a thread
pool and cutting their samples into batches with ``ops.augment``. ``TileDataset`` runs its lanes in
threads (or one per ``DataLoader`` worker) and takes their batches in turn."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .. import ops
from ..errors import HistofastError
from ..io import Slide, open_slide
from ..io.bands import Pending
from ..io.decode import RegionReader
from ..tiling.buffers import BatchBuffers
from .plan import Window
from .samples import Samples

log = logging.getLogger("histofast")

OPEN_SLIDES = 16  # slides a lane keeps open (opening an SVS checks one tile per level)


@dataclass
class _Region:
    """A decoded block: ``pixels`` uint8 (h, w, 3) (on the lane's device) at view pixel (x0, y0)."""

    slide: int
    x0: int
    y0: int
    pixels: Any = None
    error: BaseException | None = None


class Lane:
    """Runs one lane's windows: reads each window's blocks ahead, then cuts batches.

    Args:
        samples: the epoch's samples.
        windows: from ``plan``.
        epoch: the augmentation epoch.
        pool: decode threads (shared by lanes of one process).
        device: "cpu" or "cuda[:i]": where the regions go and the batches are made.
        decode: what decodes the regions (``histofast.io.decode.DECODES``; "auto": nvImageCodec on a GPU
            device where it reads the slide).
        drop_last: drop a final partial batch (one left short by a failing slide, too).
        allocate: ``allocate(shape, dtype) -> torch tensor`` for CPU batch images (e.g. in shared memory);
            default: arrays recycled once nobody holds them (``watch`` of them at a time).
    Yields:
        dicts of ``BATCH_KEYS``: ``image`` a torch tensor on ``device``, float/uint8 (B, 3, T, T) or
        (B, P, 3, t, t); numpy ``label``, ``slide``
        (index into ``samples.slides``), ``x``, ``y`` (level-0 pixels of the tile or window) int64 (B,).
    """

    def __init__(self, samples: Samples, windows: list[Window], epoch: int, pool: ThreadPoolExecutor,
                 device: str = "cpu", drop_last: bool = False, allocate: Any = None, watch: int = 2,
                 decode: str = "auto") -> None:
        self.samples, self.windows, self.epoch, self.pool = samples, windows, epoch, pool
        self.device, self.drop_last = device, drop_last
        self._regions = RegionReader(decode, device, 1)
        self.allocate = allocate
        # Fresh 200 MB batches cost their page faults: a third of the CPU time of a float32 epoch here.
        self._buffers = BatchBuffers((samples.batch_size, *samples.sample_shape), samples.dtype, "cpu", watch)
        self._slides: OrderedDict[int, Slide] = OrderedDict()
        self._skip: set[int] = set()  # slides that failed in this lane: the rest of them is skipped
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
            self._regions.close()
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

    def _read(self, window: Window) -> tuple[Window, dict[int, _Region], list[tuple[_Region, Pending]]]:
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
                region.pixels, pending = self._regions.read(view, int(x0), int(y0), int(x1 - x0), int(y1 - y0),
                                                            self.pool)
                futures.append((region, pending))
            except (HistofastError, OSError) as e:
                region.error = e
        return window, regions, futures

    def _finish(self, window: Window, regions: dict[int, _Region],
                futures: list[tuple[_Region, Pending]]) -> tuple[np.ndarray, list[_Region]]:
        """Wait for the window's blocks; drop the samples of a slide that failed (logged once)."""
        for region, pending in futures:
            try:
                pending.wait()
            except Exception as e:  # any decoder's failure: this slide is skipped, the epoch goes on
                region.error = region.error or e
        ok = np.ones(len(window.ids), bool)
        for block, region in regions.items():
            if region.error is None and isinstance(region.pixels, np.ndarray) and self.device != "cpu":
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
        return {"image": image, "label": s.labels[slide], "slide": slide, "x": level0[:, 0].copy(),
                "y": level0[:, 1].copy()}

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
