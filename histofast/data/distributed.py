"""What a dataset learns from the processes around it: its shard from ``torch.distributed`` (torchrun,
Lightning DDP, ``ddp_spawn``) at iteration time, the ranks sharing this node, and an epoch counter that
``DataLoader`` workers share with the process that made them."""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from multiprocessing.context import get_spawning_popen
from typing import Any

log = logging.getLogger("histofast")

_warned_shard = False


def process_group_shard() -> tuple[int, int] | None:
    """(rank, world size) of the initialised default process group, None without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def effective_shard(given: tuple[int, int] | None, inherited: tuple[int, int] | None = None) -> tuple[int, int]:
    """The shard a dataset iterates: ``given`` when there is one (with a warning, once, when the process
    group has several ranks but ``given`` says one), else the process group's, else ``inherited`` (what
    the parent process resolved, for a ``DataLoader`` worker started by spawning), else (0, 1)."""
    global _warned_shard
    group = process_group_shard()
    if given is not None:
        if group is not None and group[1] > 1 and given[1] == 1 and not _warned_shard:
            _warned_shard = True
            log.warning("shard=%s but torch.distributed has %d ranks: every rank iterates every sample; "
                        "leave shard= out to shard by rank", given, group[1])
        return given
    return group or inherited or (0, 1)


def accelerate_dispatcher() -> Any | None:
    """The Hugging Face Accelerate ``DataLoaderDispatcher`` running further up this thread's call stack, else None.

    It is the loader ``accelerator.prepare(DataLoader(dataset))`` makes of a DataLoader over an ``IterableDataset``
    (Accelerate's default, ``dispatch_batches=None``): only rank 0 iterates the dataset, and each group of
    ``num_processes`` batches is concatenated and split between the ranks (with ``split_batches``: each batch is
    split). A dataset that would also shard itself by the process group would then be cut twice; it asks this
    function, when iterated, sized or told its epoch, whether to deal every rank's batches instead. Only looked
    for when Accelerate is imported; the stack is walked up to 64 frames."""
    module = sys.modules.get("accelerate.data_loader")
    kind = getattr(module, "DataLoaderDispatcher", None)
    if kind is None:
        return None
    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            return None
        owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(owner, kind):
            return owner
        frame = frame.f_back
    return None


def local_world_size() -> int:
    """Processes of this job on this node: torchrun's LOCAL_WORLD_SIZE, else the process group's size
    (one node assumed), else 1."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    group = process_group_shard()
    return group[1] if group is not None else 1


class EpochClock:
    """Which epoch an iteration draws: ``set(e)`` makes the next iteration epoch e, and each iteration after
    it advances one epoch. The count lives in shared memory, so ``DataLoader`` workers (each begins one
    iteration per epoch, persistent or not) advance with the process that made them:
    ``tick(per_epoch=num_workers)``. Another rank (a process started with a copy, as ``ddp_spawn`` does) is
    not a worker: on first use there it takes a count of its own, shared with its own workers."""

    def __init__(self, values: tuple[int, int] = (0, 0)) -> None:
        # A spawn-context lock: it may be inherited by forked workers and sent to spawned ones.
        self._shared = multiprocessing.get_context("spawn").Array("q", list(values))  # epoch set, iterations since
        self._owner = os.getpid()

    def _mine(self) -> Any:
        from torch.utils.data import get_worker_info

        if os.getpid() != self._owner and get_worker_info() is None:  # a copy in another rank: its own count
            self.__init__(tuple(self._shared[:]))
        return self._shared

    def set(self, epoch: int) -> None:
        shared = self._mine()
        with shared.get_lock():
            shared[0], shared[1] = epoch, 0

    def tick(self, per_epoch: int = 1) -> int:
        """Begin an iteration: its epoch (``per_epoch`` iterations make one epoch, e.g. the loader's workers)."""
        shared = self._mine()
        with shared.get_lock():
            begun = shared[1]
            shared[1] = begun + 1
            return shared[0] + begun // per_epoch

    def __getstate__(self) -> dict:
        # Shared with a process being started (a DataLoader worker, a spawned rank); copied otherwise.
        if get_spawning_popen() is not None:
            return {"shared": self._shared, "owner": self._owner}
        return {"values": tuple(self._shared[:]), "owner": None}

    def __setstate__(self, state: dict) -> None:
        if "shared" in state:
            self._shared, self._owner = state["shared"], state["owner"]
        else:
            self.__init__(state["values"])
