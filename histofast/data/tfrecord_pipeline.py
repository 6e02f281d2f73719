"""``Pipeline.from_tfrecord``: exported TFRecord shards read back by DALI's ``fn.readers.tfrecord``,
decoded by ``fn.decoders.image`` (nvJPEG, ``device="mixed"``, on a GPU), augmented by ``_C.augment``.

Exported tiles carry no pixels beyond their edges, so shifts reflect at the tile's own border."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .. import ops
from ..checks import check_count, check_device, count_or_default
from ..errors import HistofastError
from ..export.tfrecord import dali_features, decode_example, read_tfrecord
from ..renamed import renamed_keyword
from ..specs import BatchFormat, from_keywords
from ._common import (
    DALI_INSTALL,
    PRESETS,
    dali_installed,
    default_augment,
    default_lanes,
)
from .distributed import EpochClock, effective_shard
from .plan import check_shard, shard_size
from .sources import NO_LABEL


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


def record_count(file: str) -> int:
    """Records of ``file``, from its DALI index ``file.idx`` (a line ``offset size`` per record)."""
    with open(file + ".idx", encoding="ascii", errors="replace") as f:
        lines = [line.split() for line in f if line.strip()]
    if lines and not (len(lines[0]) >= 2 and all(v.isdigit() for v in lines[0][:2])):
        raise HistofastError(f"{file}.idx: not a DALI index (lines of 'offset size')")
    return len(lines)


def _slide_name(example: bytes) -> str | None:
    """The ``slide`` feature of a serialized record as a name (None when the record has none)."""
    value = decode_example(example).get("slide")
    if value is None:
        return None
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else ""


def _manifest_counts(folder: Path) -> dict[str, tuple[int, set[str]]]:
    """What ``folder/manifest.csv`` (a slide's manifest of ``histofast tile --format tfrecord``) says of each
    shard it names: absolute shard path → (rows, distinct ``slide`` values); {} without a usable manifest."""
    try:
        with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"slide", "file"} <= set(reader.fieldnames or ()):
                return {}
            out: dict[str, tuple[int, set[str]]] = {}
            for row in reader:
                if row["file"]:  # relative to the export folder, the parent of the slide's folder
                    key = os.path.normpath(os.path.join(folder.parent, row["file"]))
                    n, slides = out.get(key, (0, set()))
                    slides.add(row["slide"])
                    out[key] = (n + 1, slides)
            return out
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}


def shard_slides(files: Sequence[str], counts: Sequence[int]) -> list[set[str | None]]:
    """The slide names each file's records carry (their ``slide`` feature; None for records without one).

    A file that a ``manifest.csv`` beside it vouches for (it names the file on as many rows as the index
    has records, all of one slide: what ``histofast tile --format tfrecord`` writes) holds one slide, so
    only its first record is read. Any other file is read through once, every record parsed. ``counts``:
    each file's records (``record_count``)."""
    manifests: dict[Path, dict[str, tuple[int, set[str]]]] = {}
    out: list[set[str | None]] = []
    for file, count in zip(files, counts):
        if count == 0:
            out.append(set())
            continue
        folder = Path(os.path.abspath(file)).parent
        if folder not in manifests:
            manifests[folder] = _manifest_counts(folder)
        rows, slides = manifests[folder].get(os.path.normpath(os.path.abspath(file)), (0, set()))
        if rows == count and len(slides) == 1:
            first = next(read_tfrecord(file, check_crc=False), None)
            if first is None:
                raise HistofastError(f"{file}: empty, but its index {file}.idx lists {count} records")
            out.append({_slide_name(first)})
        else:
            out.append({_slide_name(r) for r in read_tfrecord(file, check_crc=False)})
    return out


class TFRecordPipeline:
    """Batches of exported tiles: ``for batch in pipe`` is one epoch, as for ``Pipeline``; ``len(pipe)``
    its batches; ``pipe.set_epoch(e)`` before each epoch gives a new shuffle and augmentation draw.

    Args:
        paths: shard files or export folders (see ``shard_files``).
        batch, shuffle, seed, shard, drop_last, device, prefetch: as for ``Pipeline`` (the flat batch keywords
            of 0.x, ``augment``, ``batch_size``, ``dtype``, ``mean``, ``std``, still work for one release).
            Shuffling is DALI's reader shuffle (a buffer of ``shuffle_buffer`` records), seeded from (seed, epoch).
        threads: DALI's CPU threads (default: CPU cores, at most 4; 0.x: ``workers=``).
        classes: the class names in label-index order (the shards store label indices only); ``pipe.classes``.
    Batches:
        dicts of torch tensors on ``device``: ``image`` (B, 3, T, T), ``label``, ``slide``, ``x``, ``y`` int64 (B,),
        ``repeat`` bool (B,), as ``Pipeline``'s; ``slide`` indexes ``pipe.slides``.

    The records of all files, in order, are dealt out as DALI's reader does (``stick_to_shard``): shard r of
    w holds records [r·N // w, (r+1)·N // w) of the N counted in the files' ``.idx`` indexes (N ≥ w). As for
    ``Pipeline``, the shard is taken from ``torch.distributed`` at iteration time unless ``shard=`` is given,
    and every rank yields ``len(pipe)`` batches of the same sizes: ⌈N/w⌉ samples (a short shard repeats its
    last sample, marked ``repeat`` and with label −100) or, with ``drop_last``, ⌊N/w⌋ in whole batches. Records
    without a label (stored as −100, or −1 by older exports) have label −100. Each iteration is the next epoch
    unless ``set_epoch`` says otherwise.

    ``pipe.slides`` is the sorted distinct ``slide`` features of the records (records without one: slide
    ""), found when the pipeline is made (``shard_slides``): for the per-slide shards of ``histofast tile``,
    vouched for by the slide's ``manifest.csv``, from one record per file; for other files, which may mix
    slides, by reading every record once. A batch's slide names map to indices through a dict. A slide is
    its name: same-named slides of separate exports are one.
    """

    def __init__(self, paths: Any, *, batch: BatchFormat | None = None, shuffle: bool | None = None, seed: int = 0,
                 shard: tuple[int, int] | None = None, drop_last: bool = False, device: str = "cpu",
                 threads: int | None = None, prefetch: int = 2, shuffle_buffer: int = 1024,
                 classes: Sequence[str] | None = None, preset: str = "train", **flat: Any) -> None:
        if not dali_installed():
            raise HistofastError("Pipeline.from_tfrecord reads with NVIDIA DALI, which is not installed "
                                 f"({DALI_INSTALL})")
        if preset not in PRESETS:
            raise HistofastError(f"preset={preset!r}: expected one of {', '.join(map(repr, PRESETS))}")
        _, batch, flat = from_keywords("TFRecordPipeline", False, batch, (), flat)
        batch = batch.resolved(None if preset == "eval" else default_augment(seed))
        threads = renamed_keyword(flat, "TFRecordPipeline", "workers", "threads", threads)
        if flat:
            raise TypeError(f"TFRecordPipeline() got unexpected keyword arguments: {', '.join(sorted(flat))}")
        if batch.layout != "NCHW":
            raise HistofastError(f"batch: layout={batch.layout!r}: batches are channels first, pass layout='NCHW'")
        self.files = shard_files(paths)
        self.batch = batch
        self.shuffle = preset == "train" if shuffle is None else bool(shuffle)
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self._shard = None if shard is None else check_shard(shard)
        self.device = check_device(device)
        self.threads = count_or_default(threads, "threads", default_lanes())
        self.prefetch = count_or_default(prefetch, "prefetch", 2)
        self.shuffle_buffer = count_or_default(shuffle_buffer, "shuffle_buffer", 1)
        self._classes = [] if classes is None else [str(c) for c in classes]
        if len(set(self._classes)) < len(self._classes):
            raise HistofastError(f"classes={self._classes}: class names must be distinct")
        counts = [record_count(f) for f in self.files]
        self.num_records = sum(counts)
        if self._shard is not None:
            self._check_shard(self._shard)
        names = set().union(*shard_slides(self.files, counts))
        if None in names and len(names) > 1:
            raise HistofastError(f"paths={paths!r}: some records have a 'slide' feature and some have none; DALI's "
                                 "reader cannot batch them together")
        self._named = None not in names  # without slide features every record is slide "", index 0
        self._slides = sorted(names) if self._named else [""]
        self.epoch = 0  # the epoch of the latest iteration
        self._clock = EpochClock()

    def _check_shard(self, shard: tuple[int, int]) -> None:
        if self.num_records < shard[1]:
            raise HistofastError(f"shard={shard}: {self.num_records} records in {len(self.files)} files cannot "
                                 f"be dealt to {shard[1]} shards (DALI's reader needs one per shard at least)")

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size) in effect: ``shard=`` as given, else the process group's."""
        return effective_shard(self._shard)

    slides = property(lambda self: list(self._slides),
                      doc="The slide names the records carry, sorted; ``batch['slide']`` indexes it.")
    classes = property(lambda self: list(self._classes),
                       doc="Class names (``classes=``, else none); ``batch['label']`` indexes it.")
    failed = property(lambda self: {}, doc="Slides left out: none (kept for ``Pipeline``'s interface).")

    @property
    def num_samples(self) -> int:
        """Samples per epoch, the same on every rank (see the class docstring)."""
        return shard_size(self.num_records, self.shard, self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        n, b = self.num_samples, self.batch.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __repr__(self) -> str:
        return (f"TFRecordPipeline({len(self._slides)} slides, {self.num_samples} tiles, {len(self)} batches of "
                f"{self.batch.batch_size}, {len(self.files)} files, device={self.device!r})")

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (later ones continue from it)."""
        self.epoch = check_count(epoch, "epoch", 0)
        self._clock.set(self.epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._check_shard(self.shard)
        self.epoch = self._clock.tick()
        if len(self) == 0:
            return iter(())
        return self._even(self._dali())

    def _even(self, batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Exactly ``len(self)`` batches of the planned sizes: a shard one record short repeats its last
        sample (``repeat`` True, label −100) at the end; a shard with more stops at the count every rank has."""
        want, b = self.num_samples, self.batch.batch_size
        sizes = [min(b, want - k) for k in range(0, want, b)][: len(self)]
        last = None
        for size in sizes:
            batch = next(batches, None)
            if batch is None:  # the reader ran dry one sample early: repeat the last one
                batch = _repeats(last, size)
            elif len(batch["label"]) < size:
                extra = _repeats(batch, size - len(batch["label"]))
                batch = {k: torch.cat([batch[k], extra[k]]) for k in batch}
            else:
                batch = {k: v[:size] for k, v in batch.items()}
            last = batch
            yield batch
        batches.close()

    def _dali(self) -> Iterator[dict[str, torch.Tensor]]:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        gpu = self.device != "cpu"
        rank, world = self.shard
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0] & 0x7FFFFFFF)

        @pipeline_def(batch_size=self.batch.batch_size, num_threads=self.threads, prefetch_queue_depth=self.prefetch,
                      device_id=torch.device(self.device).index if gpu else None, seed=seed)
        def pipe():
            record = fn.readers.tfrecord(path=self.files, index_path=[f + ".idx" for f in self.files],
                                         features=dali_features(), random_shuffle=self.shuffle,
                                         initial_fill=self.shuffle_buffer, shard_id=rank, num_shards=world,
                                         stick_to_shard=True, pad_last_batch=False, name="reader")
            image = fn.decoders.image(record["image"], device="mixed" if gpu else "cpu", output_type=types.RGB)
            # slide names differ in length: padded to the batch's longest, with each one's length beside
            name = record["slide"]
            named = (fn.pad(name, fill_value=0), name.shape()) if self._named else ()
            return image, record["label"], record["x"], record["y"], *named

        outputs = ["image", "label", "x", "y"] + (["slide_name", "slide_length"] if self._named else [])
        # PARTIAL, drop_last or not: DALI's DROP would end every shard at the smallest shard's batch count
        # (all shards of the process in step), where drop_last drops this shard's short batch, as Pipeline's does.
        iterator = DALIGenericIterator(pipe(), outputs, reader_name="reader",
                                       last_batch_policy=LastBatchPolicy.PARTIAL)
        index = {s.encode("utf-8", "surrogateescape"): i for i, s in enumerate(self._slides)}
        done = 0
        for out in iterator:
            batch = out[0]
            n = len(batch["label"])
            # PARTIAL runs every shard for the largest one's batches: a smaller shard's end is an empty batch
            if n == 0 or (self.drop_last and n < self.batch.batch_size):
                continue
            batch["slide"] = (self._slide_index(batch.pop("slide_name"), batch.pop("slide_length"), index)
                              if self._named else torch.zeros(n, dtype=torch.int64))
            batch["label"] = batch["label"].where(batch["label"] >= 0, NO_LABEL)  # stored −1: unlabelled
            out = {"image": self._augment(batch["image"], done)}
            out.update({k: batch[k].reshape(-1).to(self.device) for k in ("label", "slide", "x", "y")})
            out["repeat"] = torch.zeros(n, dtype=torch.bool, device=self.device)  # records read: none repeated
            yield out
            done += n

    @staticmethod
    def _slide_index(names: torch.Tensor, lengths: torch.Tensor, index: dict[bytes, int]) -> torch.Tensor:
        """Padded uint8 slide names (B, L) and their lengths → int64 indices into ``slides``."""
        rows, lengths = names.cpu().numpy().reshape(len(names), -1), lengths.cpu().numpy().reshape(-1)
        try:
            return torch.tensor([index[row[:n].tobytes()] for row, n in zip(rows, lengths)], dtype=torch.int64)
        except KeyError as e:
            raise HistofastError(f"a record names slide {e.args[0]!r}, which the files' scan did not find: a "
                                 "manifest.csv beside them does not describe them") from None

    def _augment(self, tiles: torch.Tensor, done: int) -> torch.Tensor:
        """uint8 (B, T, T, 3) decoded tiles → (B, 3, T, T): tile j of the shard's epoch gets draw j·world + rank."""
        n, t = tiles.shape[0], tiles.shape[1]
        out = torch.empty((n, 3, t, t), dtype=getattr(torch, self.batch.out_dtype), device=tiles.device)
        rank, world = self.shard
        f = self.batch
        params = f.augment.draw_at((done + np.arange(n)) * world + rank, self.epoch) if f.augment else None
        origin = np.zeros((1, 2), np.int64)
        for j in range(n):  # one call per tile: each reflects at its own border
            p = {k: v[j : j + 1] for k, v in params.items()} if params else {}
            ops.augment(tiles[j], origin, t, **p, mean=f.mean, std=f.std, out_dtype=f.out_dtype, layout="NCHW",
                        out=out[j : j + 1])
        return out


def _repeats(batch: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """``count`` copies of ``batch``'s last sample, marked as repeats: ``repeat`` True, label −100."""
    out = {k: v[-1:].repeat(count, *[1] * (v.dim() - 1)) for k, v in batch.items()}
    out["label"] = torch.full_like(out["label"], NO_LABEL)
    out["repeat"] = torch.ones_like(out["repeat"])
    return out
