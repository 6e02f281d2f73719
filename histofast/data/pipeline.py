"""``histofast.Pipeline``, the one object training scripts use: the sample engine of ``TileDataset`` fed
through NVIDIA DALI (an ``external_source`` read by ``DALIGenericIterator``) or plain PyTorch, batches on
``device``. Both backends give the same batches in the same order."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..checks import check_device, count_or_default
from ..errors import HistofastError
from ..specs import BatchFormat, GridSpec
from ._common import BATCH_KEYS, DALI_INSTALL, PIPELINE_BACKENDS, dali_installed
from .dataset import TileDataset

if TYPE_CHECKING:
    from .tfrecord_pipeline import TFRecordPipeline


class Pipeline:
    """Tissue tiles of many slides, augmented on the device, as ready PyTorch batches.

    ``for batch in pipe`` is one epoch, a new shuffle and augmentation draw each time, reproducible from
    ``seed`` (``pipe.set_epoch(e)`` picks the epoch the next iteration draws); ``len(pipe)`` its batches.
    Under ``torch.distributed`` (torchrun, Lightning DDP) each rank takes its shard of the samples at
    iteration time, and every rank yields ``len(pipe)`` batches of the same sizes.

    Args:
        source, grid, batch and the sample, order and shard arguments (``preset="eval"`` for validation: no
            shuffle, no augmentation): as for ``TileDataset`` (its 0.x keywords too, for one release).
        backend: "dali" (the engine is the ``fn.external_source`` of a DALI pipeline, batches come
            from ``DALIGenericIterator``; ``pip install histofast[dali]``), "torch" (a ``DataLoader``
            over ``TileDataset``) or "auto" (DALI when installed). Both give the same batches (DALI is fed
            uint8 samples and converts and normalises them with ``fn.crop_mirror_normalize``: equal within
            float rounding: ``tile_dataset.batch.out_dtype`` is then "uint8").
        device: "cpu" or "cuda[:i]": where grids are scored, blocks augmented and every batch tensor lives.
        decode: what decodes slides, as ``histofast.tile_grid``'s ``decode``: with a CUDA ``device``, "auto"
            decodes on the GPU (nvImageCodec, ``pip install 'histofast[gpu]'``) where it reads the slide.
        lanes: lanes run in threads (default: CPU cores, at most 4); the order depends on it.
        prefetch: batches made ahead per lane (and DALI's prefetch queue depth).
    Batches:
        dicts of torch tensors on ``device``: ``image``, ``label``, ``slide``, ``x``, ``y`` as ``TileDataset``.
    Attributes:
        tile_dataset: the ``TileDataset`` that makes the batches. (Not named ``dataset``: Lightning would
            take the Pipeline for a DataLoader over an ``IterableDataset`` and warn that its length may be
            wrong; it is exact.)
    """

    def __init__(self, source: Any, *legacy: Any, grid: GridSpec | None = None, batch: BatchFormat | None = None,
                 backend: str = "auto", device: str = "cpu", lanes: int | None = None, prefetch: int = 2,
                 **options: Any) -> None:
        if backend not in PIPELINE_BACKENDS:
            raise HistofastError(f"backend={backend!r}: expected one of {', '.join(PIPELINE_BACKENDS)}")
        if backend == "auto":
            backend = "dali" if dali_installed() else "torch"
        elif backend == "dali" and not dali_installed():
            raise HistofastError(f"backend='dali': NVIDIA DALI is not installed ({DALI_INSTALL}), "
                                 "or use backend='torch'")
        self.device = check_device(device)
        self.prefetch = count_or_default(prefetch, "prefetch", 1)
        self.backend = backend
        self.tile_dataset = TileDataset(source, *legacy, grid=grid, batch=batch, lanes=lanes, device=self.device,
                                        **options)
        # DALI gets uint8 samples and converts and normalises them itself (fn.crop_mirror_normalize): its
        # copy of each batch moves a quarter of the float32 bytes.
        self._normalise: BatchFormat | None = None
        given = self.tile_dataset.batch
        if backend == "dali" and given.out_dtype != "uint8":
            self._normalise = given
            samples = self.tile_dataset.samples
            self.tile_dataset.samples = dataclasses.replace(samples, batch=dataclasses.replace(
                given, out_dtype="uint8", mean=BatchFormat.mean, std=BatchFormat.std))

    @classmethod
    def from_tfrecord(cls, paths: Any, **options: Any) -> "TFRecordPipeline":
        """Read TFRecord shards written by ``histofast tile --format tfrecord``; see ``TFRecordPipeline``."""
        from .tfrecord_pipeline import TFRecordPipeline

        return TFRecordPipeline(paths, **options)

    slides = property(lambda self: self.tile_dataset.slides, doc="The slide paths; ``batch['slide']`` indexes it.")
    classes = property(lambda self: self.tile_dataset.classes, doc="Class names; ``batch['label']`` indexes it.")
    failed = property(lambda self: self.tile_dataset.failed, doc="Slides left out: path → reason.")
    shard = property(lambda self: self.tile_dataset.shard, doc="(rank, world size) in effect (see ``TileDataset``).")

    def __len__(self) -> int:
        return len(self.tile_dataset)

    def set_epoch(self, epoch: int) -> None:
        self.tile_dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if len(self) == 0:
            return iter(())
        if self.backend == "torch":
            return self._torch()
        return self._dali()

    def __repr__(self) -> str:
        s = self.tile_dataset.samples
        return (f"Pipeline({len(s.slides)} slides, {self.tile_dataset.num_samples} {s.mode}, {len(self)} batches of "
                f"{s.batch.batch_size}, backend={self.backend!r}, device={self.device!r})")

    def _torch(self) -> Iterator[dict[str, torch.Tensor]]:
        # The dataset's own lane threads do the work, on the device; no worker processes, so
        # batches need no trip through shared memory.
        for batch in self.tile_dataset.batches(self.device, self.prefetch):
            yield {k: v.to(self.device) for k, v in batch.items()}

    def _dali(self) -> Iterator[dict[str, torch.Tensor]]:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        gpu = self.device != "cpu"
        source = _DaliSource(self.tile_dataset.batches(self.device if gpu else "cpu", self.prefetch, self.prefetch + 2),
                             self.prefetch)
        device_id = torch.device(self.device).index if gpu else None  # check_device resolved "cuda" to "cuda:i"

        # A pipeline per epoch: DALI asks an external source for the next epoch before this one
        # ends, which would run ahead of set_epoch.
        layout = "CHW" if self.tile_dataset.samples.mode == "tiles" else "FCHW"  # images: a grid of patches

        @pipeline_def(batch_size=self.tile_dataset.batch.batch_size, num_threads=self.tile_dataset.num_lanes,
                      device_id=device_id, prefetch_queue_depth=self.prefetch)
        def pipe():
            # The batches are ready on this thread's current stream (TileDataset.batches waited for the lanes'
            # events there): DALI reads them on it.
            outputs = list(fn.external_source(source=source, num_outputs=len(BATCH_KEYS), batch=True,
                                              device="gpu" if gpu else "cpu", no_copy=True,
                                              cuda_stream=torch.cuda.current_stream(self.device) if gpu else None,
                                              layout=[layout] + [""] * (len(BATCH_KEYS) - 1)))
            if self._normalise is not None:  # (x / 255 - mean) / std == (x - 255·mean) / (255·std)
                dtype, mean, std = self._normalise.out_dtype, self._normalise.mean, self._normalise.std
                image = BATCH_KEYS.index("image")
                outputs[image] = fn.crop_mirror_normalize(
                    outputs[image], dtype=types.FLOAT16 if dtype == "float16" else types.FLOAT,
                    mean=[255 * m for m in mean], std=[255 * s for s in std], output_layout=layout)
            return tuple(outputs)

        iterator = DALIGenericIterator(pipe(), list(BATCH_KEYS), last_batch_policy=LastBatchPolicy.PARTIAL,
                                       auto_reset=False)
        try:
            for out in iterator:
                yield out[0]
        finally:
            source.close()


class _DaliSource:
    """An epoch's batches as DALI external-source tuples; keeps the last few alive for ``no_copy``."""

    def __init__(self, batches: Iterator[dict[str, Any]], prefetch: int) -> None:
        self._batches = batches
        self._alive: list = []
        self._keep = prefetch + 2  # batches DALI may still read: its queue, the one running, the output

    def __iter__(self) -> "_DaliSource":
        return self

    def __next__(self) -> tuple:
        batch = next(self._batches)
        cuda = batch["image"].is_cuda
        out = tuple(batch[k].to(batch["image"].device) if cuda else batch[k].numpy() for k in BATCH_KEYS)
        self._alive = (self._alive + [out])[-self._keep :]
        return out

    def close(self) -> None:
        self._batches.close()
        self._alive = []

