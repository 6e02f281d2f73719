"""``Pipeline.from_tfrecord``: exported TFRecord shards read back by DALI's ``fn.readers.tfrecord``,
decoded by ``fn.decoders.image`` (nvJPEG, ``device="mixed"``, on a GPU), augmented by ``_C.augment``.

Exported tiles carry no pixels beyond their edges, so shifts reflect at the tile's own border."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .. import ops
from ..augment import Augment
from ..checks import check_device, count_or_default
from ..errors import HistofastError
from ..export.tfrecord import dali_features
from ._options import DALI_INSTALL, DEFAULT_AUGMENT, dali_installed, default_augment, default_workers
from .plan import check_shard

TFRECORD_BATCH_KEYS = ("image", "label", "x", "y")


def shard_files(paths: Any) -> list[str]:
    """TFRecord shards: files, or folders searched recursively for ``*.tfrecord`` (sorted); each
    needs its DALI index ``<shard>.idx`` beside it (``histofast tile --format tfrecord`` writes both)."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(os.fspath(f) for f in p.rglob("*.tfrecord"))
        elif p.is_file():
            files.append(os.fspath(p))
        else:
            raise HistofastError(f"paths: no such file or folder: {p}")
    if not files:
        raise HistofastError(f"paths={paths!r}: no .tfrecord shards found")
    missing = [f for f in files if not os.path.isfile(f + ".idx")]
    if missing:
        raise HistofastError(f"{missing[0]}: no DALI index {os.path.basename(missing[0])}.idx beside it "
                             "(histofast's TFRecordWriter writes one; or run DALI's tfrecord2idx)")
    return files


class TFRecordPipeline:
    """Batches of exported tiles: ``for batch in pipe`` is one epoch, as for ``Pipeline``.

    Args:
        paths: shard files or export folders (see ``shard_files``).
        augment, batch_size, dtype, mean, std, shuffle, seed, shard, drop_last, device, workers,
            prefetch: as for ``Pipeline``. Shuffling is DALI's reader shuffle (a buffer of
            ``shuffle_buffer`` records), seeded from (seed, epoch).
    Batches:
        dicts of torch tensors on ``device``: ``image`` (B, 3, T, T), ``label``, ``x``, ``y`` int64 (B,).
    """

    def __init__(self, paths: Any, *, augment: Augment | None = DEFAULT_AUGMENT,  # type: ignore[assignment]
                 batch_size: int = 64, dtype: str = "float32", mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), shuffle: bool = True, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), drop_last: bool = False, device: str = "cpu",
                 workers: int | None = None, prefetch: int = 2, shuffle_buffer: int = 1024) -> None:
        if not dali_installed():
            raise HistofastError("Pipeline.from_tfrecord reads with NVIDIA DALI, which is not installed "
                                 f"({DALI_INSTALL})")
        self.files = shard_files(paths)
        self.batch_size = count_or_default(batch_size, "batch_size", 64)
        self.mean, self.std = ops.check_batch_format(dtype, "NCHW", mean, std)
        self.augment = default_augment(augment, seed)
        self.dtype, self.shuffle, self.seed, self.drop_last = dtype, bool(shuffle), int(seed), bool(drop_last)
        self.shard = check_shard(shard)
        self.device = check_device(device)
        self.workers = count_or_default(workers, "workers", default_workers())
        self.prefetch = count_or_default(prefetch, "prefetch", 2)
        self.shuffle_buffer = count_or_default(shuffle_buffer, "shuffle_buffer", 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        gpu = self.device != "cpu"
        rank, world = self.shard
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0] & 0x7FFFFFFF)

        @pipeline_def(batch_size=self.batch_size, num_threads=self.workers, prefetch_queue_depth=self.prefetch,
                      device_id=(torch.device(self.device).index or 0) if gpu else None, seed=seed)
        def pipe():
            record = fn.readers.tfrecord(path=self.files, index_path=[f + ".idx" for f in self.files],
                                         features=dali_features(), random_shuffle=self.shuffle,
                                         initial_fill=self.shuffle_buffer, shard_id=rank, num_shards=world,
                                         stick_to_shard=True, pad_last_batch=False, name="reader")
            image = fn.decoders.image(record["image"], device="mixed" if gpu else "cpu", output_type=types.RGB)
            return image, record["label"], record["x"], record["y"]

        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        iterator = DALIGenericIterator(pipe(), list(TFRECORD_BATCH_KEYS), reader_name="reader",
                                       last_batch_policy=policy)
        done = 0
        for out in iterator:
            batch = out[0]
            if len(batch["label"]) == 0:  # PARTIAL can end an epoch with an empty batch (seen in the tests)
                continue
            yield {"image": self._augment(batch["image"], done), **{k: batch[k].reshape(-1).to(self.device)
                                                                    for k in TFRECORD_BATCH_KEYS[1:]}}
            done += len(batch["label"])

    def _augment(self, tiles: torch.Tensor, done: int) -> torch.Tensor:
        """uint8 (B, T, T, 3) decoded tiles → (B, 3, T, T): tile j of the shard's epoch gets draw j·world + rank."""
        n, t = tiles.shape[0], tiles.shape[1]
        out = torch.empty((n, 3, t, t), dtype=getattr(torch, self.dtype), device=tiles.device)
        rank, world = self.shard
        params = self.augment.draw_at((done + np.arange(n)) * world + rank, self.epoch) if self.augment else None
        origin = np.zeros((1, 2), np.int64)
        for j in range(n):  # one call per tile: each reflects at its own border
            p = {k: v[j : j + 1] for k, v in params.items()} if params else {}
            ops.augment(tiles[j], origin, t, **p, mean=self.mean, std=self.std, out_dtype=self.dtype, layout="NCHW",
                        out=out[j : j + 1])
        return out
