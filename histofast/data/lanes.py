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
from ..tiling.buffers import BatchBuffers, to_device
from .distributed import local_world_size
from .plan import Window
from .samples import Samples
from .sources import NO_LABEL

log = logging.getLogger("histofast")

OPEN_SLIDES = 16  # slides a lane keeps open (opening an SVS checks one tile per level)
READY = "_ready"  # a GPU batch's key for the CUDA event after which its tensors may be read


def handed_over(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """``batch`` (from a lane's thread) made safe to use on this thread's current stream of ``device``: that stream
    waits for the batch's ``READY`` event (popped), and its CUDA tensors are recorded as used there, so the caching
    allocator keeps their memory until this stream's work on them is done. A CPU batch is returned as it is."""
    ready = batch.pop(READY, None)
    if ready is not None:
        import torch

        stream = torch.cuda.current_stream(device)
        stream.wait_event(ready)
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.is_cuda:
                value.record_stream(stream)
    return batch


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
        regions: what decodes the regions (``histofast.io.decode.RegionReader``; the caller keeps it open across
            epochs, so its nvImageCodec decoder and per-level checks serve every epoch).
        device: "cpu" or "cuda:i": where the regions go and the batches are made.
        allocate: ``allocate(shape, dtype) -> torch tensor`` for CPU batch images (e.g. in shared memory);
            default: arrays recycled once nobody holds them (``watch`` of them at a time).
        watch: batches a consumer may hold before their arrays are no longer recycled.
    Yields:
        dicts of ``BATCH_KEYS``: ``image`` a torch tensor on ``device``, float/uint8 (B, 3, T, T) or
        (B, P, 3, t, t); numpy ``label``, ``slide``
        (index into ``samples.slides``), ``x``, ``y`` (level-0 pixels of the tile or window) int64 (B,); ``repeat``
        bool (B,): True for a sample repeated to even out the shards or to stand in for a failed slide's (its
        label is −100 too), so that each sample is counted once even where labels cannot tell.
        On a GPU also ``READY``: a CUDA event recorded after the batch was cut on this thread's stream
        (``handed_over`` makes the consumer's stream wait on it).
    """

    def __init__(self, samples: Samples, windows: list[Window], epoch: int, pool: ThreadPoolExecutor,
                 regions: RegionReader, device: str = "cpu", allocate: Any = None, watch: int = 2) -> None:
        self.samples, self.windows, self.epoch, self.pool = samples, windows, epoch, pool
        self.device = device
        self._regions = regions
        self.allocate = allocate
        # Fresh 200 MB batches cost their page faults: a third of the CPU time of a float32 epoch here.
        self._buffers = BatchBuffers((samples.batch.batch_size, *samples.sample_shape), samples.batch.out_dtype, "cpu",
                                     watch)
        self._ahead: deque = deque()  # windows whose blocks are decoding: waited for when the lane stops early
        self._slides: OrderedDict[int, Slide] = OrderedDict()
        self._skip: set[int] = set()  # slides that failed in this lane: the rest of them is skipped
        self._recent: deque[np.ndarray] = deque(maxlen=4)  # ids of the last batches cut: replacements' source
        size = samples.grids_sample_size
        self._reach = samples.batch.augment.reach(size) if samples.batch.augment is not None else 0
        self._patches = None
        if samples.mode == "images":
            rows, cols = ops.grid_shape(size, size, samples.tile_size, samples.stride)
            grid = np.indices((rows, cols)).reshape(2, -1) * samples.stride
            self._patches = np.stack([grid[1], grid[0]], 1).astype(np.int64)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            if self.device == "cpu":
                yield from self._batches()
            else:
                import torch

                with torch.cuda.device(self.device):  # the current device is per thread: this lane's, here
                    yield from self._batches()
        finally:
            # Windows still decoding when the consumer stops early: no decode may read a slide closed here.
            for _, _, futures in self._ahead:
                for _, pending in futures:
                    pending.cancel()
                    try:
                        pending.wait()
                    except BaseException:  # cancelled, or failed: nobody reads it now
                        pass
            self._ahead.clear()
            for slide in self._slides.values():
                slide.close()
            self._slides.clear()

    def _batches(self) -> Iterator[dict[str, Any]]:
        """The lane's planned batches, every one of them whatever fails: samples of a slide that fails
        are replaced by repeats of samples cut before (label −100), so every rank keeps its step count."""
        b = self.samples.batch.batch_size
        planned = sum(len(w.ids) for w in self.windows)
        ahead = self._ahead
        pending: list[tuple[np.ndarray, list[_Region], np.ndarray]] = []
        waiting = made = k = replaced = 0  # samples in pending, in batches yielded; windows submitted
        while made + waiting < planned:
            while k < len(self.windows) and len(ahead) < 2:  # this window and the next are decoding
                ahead.append(self._read(self.windows[k]))
                k += 1
            if not ahead:  # every window is in, some samples failed: read replacements
                deficit = planned - made - waiting
                replaced += deficit
                ahead.append(self._read(self._replacements(deficit)))
            got = self._finish(*ahead.popleft())
            pending.append(got)
            waiting += len(got[0])
            while waiting >= b:
                yield self._cut(pending, b)
                waiting, made = waiting - b, made + b
        if waiting:
            yield self._cut(pending, waiting)
        if replaced:
            log.warning("%d samples of failed slides were replaced by repeats of other samples (label %d): this "
                        "lane still yields its %d batches, as every rank must", replaced, NO_LABEL, -(-planned // b))

    def _replacements(self, count: int) -> Window:
        """``count`` samples to stand in for failed ones: repeats of samples this lane cut (else the first
        samples of slides that have not failed), marked as padding."""
        s = self.samples
        ok = [ids for ids in self._recent if not np.isin(s.owner[ids], list(self._skip)).any()]
        if ok:
            candidates = np.concatenate(ok)
        else:
            alive = [i for i in range(len(s.slides)) if i not in self._skip and s.counts[i] > 0
                     and s.slides[i] not in s.failed]
            if not alive:
                raise HistofastError(f"every slide failed this epoch ({len(s.failed)}: {', '.join(s.failed)})")
            candidates = s.offsets[alive]
        ids = np.sort(np.resize(candidates, count))
        return Window(ids, s.blocks[0][ids], np.ones(count, bool))

    def _slide(self, i: int) -> Slide:
        slide = self._slides.pop(i, None) or open_slide(self.samples.slides[i], threads=1)
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
                xy = self.samples.grid_coords[ids]
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
                futures: list[tuple[_Region, Pending]]) -> tuple[np.ndarray, list[_Region], np.ndarray]:
        """Wait for the window's blocks; drop the samples of a slide that failed (logged once).
        Returns the samples left: their ids, regions and padding marks."""
        for region, pending in futures:
            try:
                pending.wait()
            except Exception as e:  # any decoder's failure: this slide is skipped, the epoch goes on
                region.error = region.error or e
        ok = np.ones(len(window.ids), bool)
        for block, region in regions.items():
            if region.error is None:
                region.pixels = to_device(region.pixels, self.device)
                continue
            if region.slide not in self._skip:
                path = self.samples.slides[region.slide]
                log.warning("skipping the rest of %s this epoch: %s", path, region.error)
                self.samples.failed[path] = str(region.error)
                self._skip.add(region.slide)
            ok &= window.blocks != block
        return window.ids[ok], [regions[int(bk)] for bk in window.blocks[ok]], window.pad[ok]

    def _cut(self, pending: list[tuple[np.ndarray, list[_Region], np.ndarray]], n: int) -> dict[str, Any]:
        """Cut the first ``n`` pending samples into one batch; padding samples (repeats) are marked ``repeat`` and get
        label ``NO_LABEL``."""
        ids, regions, pads = [], [], []
        while len(ids) < n:
            head_ids, head_regions, head_pads = pending[0]
            take = min(n - len(ids), len(head_ids))
            ids.extend(head_ids[:take].tolist())
            regions.extend(head_regions[:take])
            pads.extend(head_pads[:take].tolist())
            if take == len(head_ids):
                pending.pop(0)
            else:
                pending[0] = (head_ids[take:], head_regions[take:], head_pads[take:])
        s = self.samples
        ids = np.asarray(ids, np.int64)
        self._recent.append(ids)
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
        label = s.labels[slide]
        repeat = np.asarray(pads, bool)
        label[repeat] = NO_LABEL
        batch = {"image": image, "label": label, "slide": slide, "x": level0[:, 0].copy(), "y": level0[:, 1].copy(),
                 "repeat": repeat}
        if self.device != "cpu":
            import torch

            batch[READY] = torch.cuda.current_stream(self.device).record_event()
        return batch

    def _empty(self, shape: tuple[int, ...]) -> Any:
        import torch

        if self.device != "cpu":
            return torch.empty(shape, dtype=getattr(torch, self.samples.batch.out_dtype), device=self.device)
        if self.allocate is not None:
            return self.allocate(shape, self.samples.batch.out_dtype)
        return torch.from_numpy(self._buffers.take()[: shape[0]])

    def _augment(self, region: _Region, ids: np.ndarray, out: Any) -> None:
        s = self.samples
        origins = s.grid_coords[ids] - (region.x0, region.y0)
        params = s.batch.augment.draw_at(ids, self.epoch) if s.batch.augment is not None else {}
        if s.mode == "tiles":
            ops.augment(region.pixels, origins, s.tile_size, **params, mean=s.batch.mean, std=s.batch.std,
                        out_dtype=s.batch.out_dtype, layout="NCHW", out=out)
            return
        size = s.grids_sample_size
        window = ops.augment(region.pixels, origins, size, **params, out_dtype="uint8", layout="NHWC")
        for j in range(len(ids)):  # then the window's patch grid, normalised, as (P, 3, t, t)
            ops.augment(window[j], self._patches, s.tile_size, mean=s.batch.mean, std=s.batch.std,
                        out_dtype=s.batch.out_dtype, layout="NCHW", out=out[j])


def decode_threads(processes: int = 1) -> int:
    """Decode threads per process: the node's cores shared by ``processes`` processes (e.g. a DataLoader's
    workers) in each of the job's ranks on this node (``LOCAL_WORLD_SIZE``)."""
    return max(1, (os.cpu_count() or 1) // (max(1, processes) * local_world_size()))
