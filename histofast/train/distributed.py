"""``fit`` on many processes (``torchrun``, or a process group the caller made): each rank's device, the
process group, the stage's trained module wrapped in ``DistributedDataParallel``, and the few collectives
``fit`` needs to keep every rank's decisions the same while rank 0 alone writes.

One process is the world of one rank: every collective is then a no-op, so ``fit`` runs one code path."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import HistofastError
from .loop import resolve_device

log = logging.getLogger(__name__)


@dataclass
class World:
    """This process's place among the ranks of a run: ``rank`` of ``size``, ``local_rank`` on its node;
    ``owned``: ``fit`` made the process group (and destroys it at the end)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files, prints and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (on the rank's device: gloo on the CPU, nccl on GPUs)."""
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def agree(self, error: str | None) -> None:
        """Raise rank 0's ``error`` (a message, or None for none) on every rank, so a check only rank 0 can make
        (its files) stops all ranks together instead of leaving the others waiting."""
        error = self.broadcast(error)
        if error is not None:
            raise HistofastError(error)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: after a training epoch each rank's
        buffers last saw its own batch, while the checkpoint holds rank 0's; validation and the next epoch
        then start from what the checkpoint holds, so a resumed run continues exactly."""
        if self.distributed:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` (gradients averaged over the ranks at each backward);
        ``module`` itself in one process. Every parameter of ``module`` that requires a gradient must get one
        at every step: ``stage_module`` gives the module of exactly the parameters a stage trains, so neither
        ``find_unused_parameters`` nor ``static_graph`` is needed."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def close(self) -> None:
        """Destroy the process group if ``fit`` made it."""
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise HistofastError(f"environment {name}={value!r}: expected an integer (set by torchrun)") from None


def current_rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK``, else 0 (without starting anything)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return _env_int("RANK", 0)


def rank_device(device: str, world: World) -> torch.device:
    """The device of this rank for the config's ``device``: "auto" and "cuda" take the GPU of the local rank
    (``cuda:LOCAL_RANK``; ``cuda:0`` when each rank sees a single GPU); "cuda:N" must be that GPU."""
    if not world.distributed:
        return resolve_device(device)
    d = resolve_device(device)  # checks the name, and that CUDA exists when asked for
    if d.type == "cpu":
        return d
    count = torch.cuda.device_count()
    if world.local_rank < count:
        index = world.local_rank
    elif count == 1:  # one GPU visible per rank (CUDA_VISIBLE_DEVICES set per rank by the launcher)
        index = 0
    else:
        raise HistofastError(f"local rank {world.local_rank} has no GPU of its own: {count} visible on this node; "
                             "start at most one rank per GPU (torchrun --nproc_per_node)")
    if d.index is not None and d.index != index:
        raise HistofastError(f"device={device!r}: with {world.size} ranks, each rank trains on the GPU of its local "
                             f"rank (this one: cuda:{index}); give --device cuda or auto")
    return torch.device("cuda", index)


def caller_world() -> World:
    """The world of a process group the caller initialised (never one started here), else one process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return World()


def setup(device: str) -> tuple[World, torch.device]:
    """The run's world and this rank's device.

    A process group the caller initialised is used as it is (never destroyed here). Otherwise torchrun's
    environment (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) starts one: nccl
    when the device is a GPU, gloo on the CPU. Without either, one process: ``World()``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", rank % max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 0)
        world = World(rank, size, local)
        d = rank_device(device, world)
        if world.distributed and d.type == "cpu" and dist.get_backend() == "nccl":
            raise HistofastError(f"device={device!r}: the process group's backend is nccl, which cannot reduce CPU "
                                 "tensors; train on the GPUs (--device cuda) or make the group with gloo")
        if d.type == "cuda":
            torch.cuda.set_device(d)
        return world, d
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World(), resolve_device(device)
    if not dist.is_available():
        raise HistofastError(f"WORLD_SIZE={size}: this PyTorch has no torch.distributed")
    world = World(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0), owned=True)
    d = rank_device(device, world)
    if d.type == "cuda":
        torch.cuda.set_device(d)
        dist.init_process_group("nccl", device_id=d)
    else:
        dist.init_process_group("gloo")
    log.info("rank %d of %d (local rank %d) on %s, backend %s", world.rank, size, world.local_rank, d,
             dist.get_backend())
    return world, d


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of ``rank``'s own draws (dropout) after the model is built from ``seed`` on every rank:
    independent streams per rank, the same for the same (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


def sync_batchnorm(model: nn.Module) -> int:
    """Replace, in place, every BatchNorm layer that trains (parameters requiring gradients) by a
    ``SyncBatchNorm``: batch statistics over all ranks' samples, as one process with the whole batch would
    compute them. Frozen layers (``freeze``) stay as they are. Returns how many were replaced."""
    replaced = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            if any(p.requires_grad for p in child.parameters()):
                setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                replaced += 1
        else:
            replaced += sync_batchnorm(child)
    return replaced
