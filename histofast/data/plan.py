"""The epoch plan: which samples each lane of a shard cuts, in which order: a pure function of
(seed, epoch, shard, lanes), so every backend and every rerun gives the same batches.

Shuffling permutes blocks over all slides, then samples within windows of ``WINDOW_BLOCKS`` blocks."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import HistofastError
from .samples import Samples

WINDOW_BLOCKS = 2  # shuffle mixes the samples of this many blocks (memory: ~50 MB of pixels each)


@dataclass(frozen=True)
class Window:
    """Samples a lane cuts from a few blocks: ``ids`` in output order, each one's ``block``, and which are
    repeats that even out the shards (``pad``)."""

    ids: np.ndarray  # int64 (n,) sample numbers
    blocks: np.ndarray  # int64 (n,) block numbers
    pad: np.ndarray  # bool (n,)


def check_shard(shard: Any) -> tuple[int, int]:
    """``(rank, world_size)`` with 0 ≤ rank < world_size."""
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise HistofastError(f"shard={shard!r}: expected (rank, world_size)") from None
    if world <= 0 or not 0 <= rank < world:
        raise HistofastError(f"shard={tuple(shard)}: rank must lie in [0, world_size) and world_size ≥ 1")
    return rank, world


def shard_size(total: int, shard: tuple[int, int], drop_last: bool = False) -> int:
    """Samples every rank of ``shard``'s world draws when ``total`` are dealt out, the same on every rank
    (``DistributedSampler``'s rule): ⌈total/world⌉, shorter shares repeating their own first samples;
    with ``drop_last`` ⌊total/world⌋, the rest left out this epoch."""
    world = shard[1]
    return total // world if drop_last else -(-total // world)


def batch_count(samples: Samples, shard: tuple[int, int], drop_last: bool) -> int:
    n, b = shard_size(int(samples.offsets[-1]), shard, drop_last), samples.batch.batch_size
    return n // b if drop_last else -(-n // b)


def plan(samples: Samples, epoch: int, shard: tuple[int, int], lanes: int, lane: int, *,
         shuffle: bool, seed: int, drop_last: bool) -> list[Window]:
    """The windows lane ``lane`` of ``lanes`` cuts in ``epoch`` for ``shard``.

    The epoch's sequence is the blocks in order (or permuted by (seed, epoch) when shuffling),
    each block's samples row-major; shard r of w takes its r-th contiguous share, evened out to
    ``shard_size`` samples (a short share starts with repeats of its first samples, marked ``pad``; a long
    one is cut);
    the shard's batches are dealt to lanes in contiguous runs (only the last lane's last batch can be
    partial); with ``shuffle`` each window's samples are permuted. Batches are then taken round-robin
    over the lanes (``merge``)."""
    block_of, order = samples.blocks
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        first = np.flatnonzero(np.r_[True, np.diff(block_of[order]) != 0])
        sizes = np.diff(np.r_[first, len(order)])
        perm = rng.permutation(len(first))
        order = np.concatenate([order[first[b] : first[b] + sizes[b]] for b in perm])
    rank, world = shard
    total = len(order)
    share = order[rank * total // world : (rank + 1) * total // world]
    size = shard_size(total, shard, drop_last)
    # A share shorter than ``size`` (by one at most; or empty when total < world) repeats its first samples,
    # placed first: beside their originals (the same blocks), and never a last batch made only of repeats.
    extra = np.resize(share if len(share) else order, max(0, size - len(share)))
    mine = np.concatenate([extra, share])[:size]
    pad = np.arange(size) < len(extra)
    b = samples.batch.batch_size
    n_batches = batch_count(samples, shard, drop_last)
    keep = min(size, n_batches * b)
    lo, hi = lane * n_batches // lanes * b, (lane + 1) * n_batches // lanes * b
    mine, pad = mine[:keep][lo:hi], pad[:keep][lo:hi]
    windows, start = [], 0
    rng = np.random.default_rng([seed, epoch, rank, world, lanes, lane])
    starts = np.flatnonzero(np.r_[True, np.diff(block_of[mine]) != 0]) if len(mine) else np.array([], np.int64)
    for k in range(0, len(starts), WINDOW_BLOCKS):
        stop = starts[k + WINDOW_BLOCKS] if k + WINDOW_BLOCKS < len(starts) else len(mine)
        ids, padded = mine[start:stop], pad[start:stop]
        if shuffle:
            perm = rng.permutation(len(ids))
            ids, padded = ids[perm], padded[perm]
        windows.append(Window(ids, block_of[ids], padded))
        start = stop
    return windows


def merge(lanes: Sequence[Iterator[Any]]) -> Iterator[Any]:
    """Round-robin over iterators, dropping each as it ends (the order of a DataLoader's workers)."""
    live = deque(lanes)
    while live:
        it = live.popleft()
        try:
            item = next(it)
        except StopIteration:
            continue
        live.append(it)
        yield item

