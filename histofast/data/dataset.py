"""``TileDataset``: the sample engine as a PyTorch ``IterableDataset`` whose items are whole batches. It runs
its lanes in threads in the main process, or one lane per ``DataLoader`` worker; both give the same
batches in the same order for the same seed, shard, epoch and number of lanes."""
from __future__ import annotations

import math
import queue
import threading
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data._utils.collate import default_collate_fn_map

from ..checks import check_count, check_device, count_or_default
from ..errors import HistofastError
from ..io.decode import RegionReader, check_decode
from ..renamed import renamed_attribute, renamed_keyword
from ..specs import BatchFormat, GridSpec, from_keywords
from ..tiling import TileGrid
from ._common import PRESETS, default_augment, default_lanes
from .distributed import EpochClock, accelerate_dispatcher, effective_shard
from .lanes import Lane, decode_threads, handed_over
from .plan import batch_count, check_shard, merge, plan, shard_size
from .samples import MODES, build_samples
from .sources import resolve

LEGACY_IMAGE_SIZE = 2560  # mode="images" without image_size= in 0.x


class TileDataset(torch.utils.data.IterableDataset):
    """Kept tissue tiles of many slides, augmented and batched, as a PyTorch ``IterableDataset``.

    Grids are scored once, here (a slide that fails is logged, left out and listed in ``failed``);
    each iteration is one epoch. Items are whole batches: use ``DataLoader(ds, batch_size=None)``.

    In the main process the dataset runs ``lanes`` lanes (``histofast.data.lanes``) in threads and takes
    their batches in turn; in a ``DataLoader`` worker it runs lane ``id`` of ``num_workers``, and the loader takes
    the workers' batches in turn: the same order when ``num_workers == lanes``. Threads are the
    faster choice (decoding and ``_C`` release the GIL; batches need no trip through shared memory).

    Args:
        source: slide paths, a manifest CSV (``path,label[,patient]``), a class-folder directory,
            a list of ``SlideSource`` (``histofast.split``'s result) or of ``TileGrid``s.
        grid: the tiles (``histofast.GridSpec``: tile size, stride, level / mpp / magnification, white test);
            default ``GridSpec()``: 512-pixel tiles side by side at level 0.
        batch: the batch format (``histofast.BatchFormat``: batch size, augmentation, dtype, normalisation; layout
            NCHW). Default: ``BatchFormat()``, 64 float32 samples in [0, 1], augmented as ``preset`` says (its
            ``augment="preset"``: for ``"train"`` ``Augment(rot90=True, flip=True, max_shift=16, seed=seed)``).
        labels: class names for a list of paths, one per path. classes: the class names in index
            order (default: the sorted label names); a label outside them is an error.
        image_size: None: one sample per kept tile of ``grid``. An integer: one sample per kept window of
            ``image_size`` at stride ``image_size``, cut into its patch grid (``grid``'s tile size and stride).
        shuffle: permute blocks of slide area over all slides, then samples within windows of blocks
            (default: True for ``preset="train"``, False for ``"eval"``).
        seed: the shuffle (and default augmentation) seed; each epoch has its own draw.
        shard: ``(rank, world_size)``: this process's share. Default: taken when iterating from the
            initialised ``torch.distributed`` process group (torchrun, Lightning DDP), else (0, 1).
            Every rank gets the same number of samples, as with ``DistributedSampler``: without
            ``drop_last`` ⌈N/world⌉ (a shorter share repeats its own first samples, with label −100), with
            it ⌊N/world⌋; so every rank yields ``len(self)`` batches of the same sizes.
        drop_last: drop the epoch's last partial batch (and the samples beyond an even share).
        preset: "train" (shuffle and the default augmentation) or "eval" (neither, unless given: the
            order and pixels of validation and ``histofast evaluate``).
        lanes: lanes run in threads in the main process (default: CPU cores, at most 4).
        threads: decode threads per process (default: CPU cores / processes).
        device: "cpu" or "cuda[:i]": where grids are scored (and, decoding on the GPU, slides decoded).
        decode: what decodes slides, for scoring and for batches: as ``histofast.tile_grid``'s ``decode``
            ("auto": nvImageCodec on a GPU device where it reads the slide, else the CPU decoders).
        progress: a tqdm bar while grids are scored.
        legacy, flat: the keywords of 0.x, for one release, with a ``FutureWarning``: ``tile_size`` and ``stride``
            (also as the 2nd and 3rd positional arguments; the stride then defaults to the tile size, not 256), the
            other grid settings, ``augment``, ``batch_size``, ``dtype``, ``mean``, ``std``, ``mode`` and ``workers``
            (now ``lanes``); see ``histofast.specs.from_keywords``.
    Yields:
        dicts of torch CPU tensors: ``image`` (B, 3, T, T) (tiles) or (B, P, 3, t, t) (images);
        ``label`` int64 (B,) (−100 when unlabelled or a repeat evening out the shards: ``cross_entropy``'s
        default ``ignore_index``); ``slide`` int64 (B,) (index into ``slides``); ``x``, ``y`` int64 (B,):
        the tile's or window's corner in level-0 pixels; ``repeat`` bool (B,): True for a repeat evening out the
        shards (or standing in for a failed slide's sample), so that every sample counts once, labelled or not.

    Epochs: each iteration is the next epoch (a new shuffle and augmentation draw), in the main process
    and in ``DataLoader`` workers alike, persistent or not; ``set_epoch(e)`` makes the next one epoch e.

    Hugging Face Accelerate: ``accelerator.prepare(DataLoader(ds, batch_size=None))`` makes a loader that
    iterates the dataset on rank 0 only and splits each group of ``num_processes`` batches between the ranks. The
    dataset sees that loader when it is iterated, sized or told its epoch, and then deals every rank's batches in
    turn (rank 0's batch k, rank 1's batch k, …; with ``split_batches``, concatenated): each rank receives exactly
    the batches it would iterate itself under torchrun, and ``len`` of the prepared loader is ``len(ds)``. Such a
    loader needs ``num_workers=0`` (the lanes run in threads); other loaders raise a ``HistofastError`` on
    ``set_epoch``, which Accelerate calls on every rank.
    """

    def __init__(
        self,
        source: Any,
        *legacy: Any,
        grid: GridSpec | None = None,
        batch: BatchFormat | None = None,
        labels: Sequence[Any] | None = None,
        classes: Sequence[str] | None = None,
        image_size: int | None = None,
        shuffle: bool | None = None,
        seed: int = 0,
        shard: tuple[int, int] | None = None,
        drop_last: bool = False,
        preset: str = "train",
        lanes: int | None = None,
        threads: int | None = None,
        device: str = "cpu",
        decode: str = "auto",
        progress: bool = True,
        **flat: Any,
    ) -> None:
        super().__init__()
        check_count(seed, "seed", 0)
        if preset not in PRESETS:
            raise HistofastError(f"preset={preset!r}: expected one of {', '.join(map(repr, PRESETS))}")
        image_size = _legacy_mode(flat, image_size)
        grid, batch, flat = from_keywords("TileDataset", grid, batch, legacy, flat, stride_was=256)
        batch = batch.resolved(None if preset == "eval" else default_augment(seed))
        lanes = renamed_keyword(flat, "TileDataset", "workers", "lanes", lanes)
        if flat:
            raise TypeError(f"TileDataset() got unexpected keyword arguments: {', '.join(sorted(flat))}")
        self.device = check_device(device)
        self.decode = check_decode(decode, self.device)
        self._shard = None if shard is None else check_shard(shard)
        self._inherited_shard: tuple[int, int] | None = None
        self.num_lanes = count_or_default(lanes, "lanes", default_lanes())
        self.threads = None if threads is None else check_count(threads, "threads")
        if isinstance(source, Sequence) and not isinstance(source, str) and source and \
                all(isinstance(g, TileGrid) for g in source):
            items: list = list(source)
        else:
            items = resolve(source, labels)
        self.grid = None if items and isinstance(items[0], TileGrid) else grid  # TileGrids bring their own
        self.samples = build_samples(items, grid, batch, classes=classes, image_size=image_size, device=self.device,
                                     decode=self.decode, progress=progress)
        self.shuffle = preset == "train" if shuffle is None else bool(shuffle)
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self.epoch = 0  # the epoch of the latest iteration begun in this process
        self._clock = EpochClock()
        # Each lane's region decoder, kept across epochs: an nvImageCodec decoder, its CUDA stream and its
        # per-level checks are made once per lane, not once per lane and epoch.
        self._readers: dict[tuple[int, str], RegionReader] = {}

    @property
    def batch(self) -> BatchFormat:
        """The batch format the lanes cut (for ``Pipeline``'s DALI backend: uint8, DALI converts)."""
        return self.samples.batch

    @property
    def workers(self) -> int:
        """Deprecated name of ``num_lanes``."""
        return renamed_attribute(self, "workers", "num_lanes")

    @property
    def slides(self) -> list[str]:
        """The slide paths; a batch's ``slide`` indexes this list."""
        return self.samples.slides

    @property
    def classes(self) -> list[str]:
        """Class names; a batch's ``label`` indexes this list."""
        return self.samples.classes

    @property
    def failed(self) -> dict[str, str]:
        """Slides left out (path → reason): while scoring, or mid-epoch (in this process)."""
        return self.samples.failed

    @property
    def num_samples(self) -> int:
        """Samples of this shard per epoch, the same on every rank (repeats included; with ``drop_last``
        the even share, before the last partial batch is dropped)."""
        return shard_size(int(self.samples.offsets[-1]), self.shard, self.drop_last)

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size) of this process's share: ``shard=`` as given, else the process group's."""
        return effective_shard(self._shard, self._inherited_shard)

    def __len__(self) -> int:
        """Batches per epoch of this shard (the same on every rank); asked by Accelerate's dispatching loader
        (see the class docstring), the batches it takes from the dataset in an epoch."""
        count = batch_count(self.samples, self.shard, self.drop_last)
        dispatcher = accelerate_dispatcher()
        if dispatcher is not None and not dispatcher.split_batches:
            return count * dispatcher.state.num_processes
        return count

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (later ones continue from it); as with
        ``DistributedSampler``, but optional: without it each iteration is the next epoch."""
        self._dispatched_shards(accelerate_dispatcher())  # refuses a loader that would lose batches, on every rank
        self.epoch = check_count(epoch, "epoch", 0)
        self._clock.set(self.epoch)

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader worker started by spawning has no process group: it keeps the shard resolved here.
        state = self.__dict__.copy()
        state["_inherited_shard"] = self.shard
        state["_readers"] = {}  # decoders stay in the process that made them
        return state

    def close(self) -> None:
        """Release the decoders kept across epochs (nvImageCodec's threads and CUDA streams); iterating again
        makes new ones. Done too when the dataset is garbage collected."""
        _close_readers(self._readers)

    def _reader(self, lane: int, device: str) -> RegionReader:
        """Lane ``lane``'s region decoder for ``device``, made on first use."""
        if not self._readers:
            weakref.finalize(self, _close_readers, self._readers)
        key = (lane, device)
        if key not in self._readers:
            self._readers[key] = RegionReader(self.decode, device, 1)
        return self._readers[key]

    def _dispatched_shards(self, dispatcher: Any) -> list[tuple[int, int]]:
        """The shards this process's iteration deals: its own, or under Accelerate's dispatching loader every
        rank's (that loader then splits them; it must iterate in this process, and no ``shard=`` may be given)."""
        if dispatcher is None:
            return [self.shard]
        ranks = int(dispatcher.state.num_processes)
        if dispatcher.num_workers:
            raise HistofastError(
                f"accelerator.prepare(DataLoader(TileDataset, num_workers={dispatcher.num_workers})): Accelerate "
                "iterates the loader on rank 0 only and splits its batches between the ranks, so the dataset must "
                "deal every rank's batches from one process: pass num_workers=0 (the dataset runs its lanes= lanes "
                "in threads), or iterate a histofast.Pipeline without accelerator.prepare (it shards by rank itself)")
        if self._shard is not None and ranks > 1:
            raise HistofastError(
                f"shard={self._shard} with accelerator.prepare: Accelerate shares out the batches of rank 0's loader "
                "itself; leave shard= out (the dataset then deals every rank's batches for Accelerate to split)")
        return [(r, ranks) for r in range(ranks)]

    def lanes(self, device: str = "cpu", watch: int = 2,
              shards: Sequence[tuple[int, int]] | None = None) -> list[Lane]:
        """This process's lanes for the next epoch (one in a ``DataLoader`` worker), for its shard or, given
        ``shards``, for each of them in turn (``num_lanes`` lanes each); ``watch``: batches a consumer may hold before
        their arrays are no longer recycled."""
        info = torch.utils.data.get_worker_info()
        count, mine = (info.num_workers, [info.id]) if info is not None else (self.num_lanes, range(self.num_lanes))
        self.epoch = self._clock.tick(info.num_workers if info is not None else 1)
        threads = self.threads or decode_threads(info.num_workers if info is not None else 1)
        pool = ThreadPoolExecutor(threads, thread_name_prefix="histofast-decode")
        allocate = _shared_empty if info is not None else None
        shards = [self.shard] if shards is None else shards
        return [Lane(self.samples, plan(self.samples, self.epoch, shard, count, s, shuffle=self.shuffle,
                                        seed=self.seed, drop_last=self.drop_last),
                     self.epoch, pool, self._reader(k * len(mine) + j, device), device, allocate, watch)
                for k, shard in enumerate(shards) for j, s in enumerate(mine)]

    def batches(self, device: str = "cpu", prefetch: int = 2, held: int = 1) -> Iterator[dict[str, Any]]:
        """One epoch of batches on ``device`` (what iterating does, on the CPU); ``held``: batches the
        consumer keeps alive at once. Under Accelerate's dispatching loader, every rank's batches in turn."""
        in_worker = torch.utils.data.get_worker_info() is not None  # there, the loader runs ahead
        dispatcher = None if in_worker else accelerate_dispatcher()
        shards = self._dispatched_shards(dispatcher)
        lanes = self.lanes(device, watch=prefetch + held + len(shards), shards=shards)
        pool = lanes[0].pool
        running = [iter(s) if in_worker else _Ahead(iter(s), prefetch) for s in lanes]
        per = len(running) // len(shards)
        # Every shard yields the same number of batches of the same sizes: round-robin deals batch k of each in turn.
        order = merge([merge(running[k * per : (k + 1) * per]) for k in range(len(shards))])
        split = dispatcher is not None and dispatcher.split_batches
        try:
            group: list[Batch] = []
            for batch in order:
                batch = handed_over(batch, device)  # made on a lane's thread (and stream), used on this one
                batch = Batch({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in batch.items()})
                if not split:
                    yield batch
                    continue
                group.append(batch)  # Accelerate splits each batch between the ranks: one of every shard's
                if len(group) == len(shards):
                    yield Batch({k: torch.cat([b[k] for b in group]) for k in batch})
                    group = []
        finally:
            for it in running:
                it.close()
            pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.batches()


def _legacy_mode(flat: dict[str, Any], image_size: int | None) -> int | None:
    """``mode=`` of 0.x: "images" (with ``image_size``, default 2560) or "tiles"; now ``image_size`` alone says it."""
    if "mode" not in flat:
        return image_size
    mode = flat.pop("mode")
    if mode not in MODES:
        raise HistofastError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    warnings.warn(f"TileDataset(mode={mode!r}): give image_size= for image samples, nothing for tiles; mode= goes in "
                  "the next release", FutureWarning, stacklevel=3)
    if mode == "tiles":
        return None
    return LEGACY_IMAGE_SIZE if image_size is None else image_size


class Batch(dict):
    """A batch as ``TileDataset`` yields it: a dict of tensors that refuses to be batched again."""


def _refuse_collate(batch: Any, *, collate_fn_map: Any = None) -> Any:
    raise HistofastError("DataLoader(TileDataset): its items are whole batches already; pass batch_size=None "
                         "(DataLoader(dataset, batch_size=None, num_workers=…)), or iterate the dataset or a "
                         "histofast.Pipeline directly")


# default_collate looks a batch's type up here first (torch's documented extension point for custom types).
default_collate_fn_map[Batch] = _refuse_collate
# Lightning cautions, for any DataLoader over an IterableDataset with __len__, that workers not configured
# apart would duplicate data and make the length wrong. A TileDataset's workers are lanes of one plan and
# its length is exact, so the caution (raised from Lightning's own modules only) is silenced.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined",
                        module=r"(lightning|pytorch_lightning)(\.|$)")


class _Ahead:
    """Runs an iterator in a thread, ``depth`` items ahead; its errors are raised in the consumer."""

    _END = object()

    def __init__(self, it: Iterator[Any], depth: int) -> None:
        self._it, self._queue = it, queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="histofast-lane", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as e:  # handed to the consumer, raised there
            self._put((self._END, e))
        finally:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()

    def _put(self, item: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "_Ahead":
        return self

    def __next__(self) -> Any:
        item, error = self._queue.get()
        if error is not None:
            raise error
        if item is self._END:
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _close_readers(readers: dict[Any, RegionReader]) -> None:
    while readers:
        readers.popitem()[1].close()


def _shared_empty(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """A CPU tensor born in shared memory: a DataLoader worker sends it without copying (as ``default_collate``)."""
    dt = getattr(torch, dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * torch.empty(0, dtype=dt).element_size())
    return torch.empty(0, dtype=dt).set_(storage, 0, shape)

