"""Where batches are made: batch arrays recycled once nobody holds them, and band pixels moved to the
device that augments them."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np


def to_device(pixels: Any, device: str) -> Any:
    """``pixels`` (numpy, a pinned host tensor, or a torch tensor where a GPU decoded them) as they are on the
    CPU, else a torch tensor on ``device`` (no copy when they are there already).

    The copy is queued on ``device``'s current stream without waiting: from pinned memory it runs while the host
    goes on (whoever overwrites that memory waits for the stream first, as ``SlideRows`` does, and PyTorch's
    pinned allocator keeps a freed buffer until the copy is done); from pageable memory CUDA stages it first."""
    if device == "cpu":
        return pixels
    import torch

    if not isinstance(pixels, torch.Tensor):
        pixels = torch.from_numpy(pixels)
    return pixels.to(device, non_blocking=True)


class BatchBuffers:
    """Batch arrays, recycled once nothing outside holds them any more.

    A fresh 200 MB batch costs its page faults (about a quarter of the augment time on the CPU);
    in ``for batch in batches`` the batch before last is free again by the time the next is cut.
    A batch the caller still references (or any view of it) is never reused."""

    def __init__(self, shape: tuple[int, ...], dtype: str, device: str, watch: int = 2) -> None:
        self.shape, self.dtype, self.device, self.watch = shape, dtype, device, watch
        self._given: list[Any] = []

    def take(self) -> Any:
        if self.device != "cpu":  # torch's caching allocator already recycles device memory
            import torch

            return torch.empty(self.shape, dtype=getattr(torch, self.dtype), device=self.device)
        for k in range(len(self._given)):
            if sys.getrefcount(self._given[k]) == 2:  # held by this list (and the call's argument) only
                array = self._given.pop(k)
                break
        else:
            array = np.empty(self.shape, self.dtype)
            if len(self._given) >= self.watch:
                self._given.pop(0)  # the caller keeps that one: stop watching it
        self._given.append(array)
        return array
