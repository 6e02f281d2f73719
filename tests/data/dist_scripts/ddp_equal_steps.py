"""One rank of ``torchrun --nproc_per_node 2 ddp_equal_steps.py SPEC OUT`` (gloo, CPU), run by
tests/data/test_distributed.py: every Pipeline of SPEC is built before the process group exists (as a script
does before Lightning's ``fit``) and without ``shard=``, then iterated for a few epochs, each batch taking one
DistributedDataParallel step (a gradient all-reduce: a rank with one batch more or fewer would hang until the
gloo timeout). Writes ``OUT/rank<r>.json``: per scenario ``len(pipe)``, ``pipe.shard``, the batches as
``[slide, x, y, label]`` rows, ``pipe.failed`` (or the scenario's ``error``); and the histofast log records.

SPEC (JSON): ``{"epochs": int, "timeout_s": float, "collective_timeout_s": float, "scenarios": [{"name",
"paths", "labels", "options", "truncate": [path, bytes] or null, "loader": DataLoader arguments or null (then
a ``DataLoader(TileDataset)`` instead of a Pipeline)}], "explicit": {"paths", "labels", "options"}}``.

Everything runs under ``main()``: spawned DataLoader workers import this file again."""
from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

import histofast as hf


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def rows(batch: dict) -> list[list[int]]:
    return [list(r) for r in zip(*(batch[k].tolist() for k in ("slide", "x", "y", "label")))]


def build(s: dict) -> object:
    """A Pipeline, or with ``loader`` a ``DataLoader(TileDataset, batch_size=None, **loader)``."""
    if s.get("loader") is None:
        return hf.Pipeline(s["paths"], labels=s["labels"], progress=False, **s["options"])
    dataset = hf.TileDataset(s["paths"], labels=s["labels"], progress=False, **s["options"])
    return torch.utils.data.DataLoader(dataset, batch_size=None, **s["loader"])


def run(s: dict, pipe: object, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epochs: int) -> dict:
    if s.get("truncate"):  # scored fine, then damaged on the shared disk before the epoch
        dist.barrier()
        if dist.get_rank() == 0:
            os.truncate(*s["truncate"])
        dist.barrier()
    owner = pipe.dataset if isinstance(pipe, torch.utils.data.DataLoader) else pipe
    result = {"len": len(pipe), "shard": list(owner.shard), "epochs": []}
    for _ in range(epochs):
        batches = []
        for batch in pipe:
            logits = model(batch["image"])
            # reduction="sum": a batch of repeats only (label -100) adds nothing (the mean would be 0/0).
            loss = F.cross_entropy(logits, batch["label"], reduction="sum")
            optimizer.zero_grad()
            loss.backward()  # DDP all-reduces the gradients here
            optimizer.step()
            batches.append(rows(batch))
        result["epochs"].append(batches)
    result["failed"] = sorted(owner.failed)
    return result


def main() -> None:
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    # A watchdog: a rank still running after the deadline prints every thread's stack and exits.
    faulthandler.dump_traceback_later(spec["timeout_s"], exit=True)
    os.makedirs(out_dir, exist_ok=True)
    records = Records()
    logging.getLogger("histofast").addHandler(records)

    # Built before init_process_group, without shard=: the shard must come from the group when iterating.
    pipes = {s["name"]: build(s) for s in spec["scenarios"]}

    dist.init_process_group("gloo", timeout=timedelta(seconds=spec["collective_timeout_s"]))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    out: dict = {"rank": rank, "world": world, "scenarios": {}}
    for s in spec["scenarios"]:
        try:  # one scenario's error is reported with it; the others still run
            out["scenarios"][s["name"]] = run(s, pipes[s["name"]], model, optimizer, spec["epochs"])
        except Exception:
            out["scenarios"][s["name"]] = {"error": traceback.format_exc()}
            traceback.print_exc()

    # shard= given: it wins; shard=(r, 2) gives what the process group gave; (0, 1) under 2 ranks is warned about.
    e = spec["explicit"]
    mine = hf.Pipeline(e["paths"], labels=e["labels"], progress=False, shard=(rank, world), **e["options"])
    before = len(records.messages)
    whole = hf.Pipeline(e["paths"], labels=e["labels"], progress=False, shard=(0, 1), **e["options"])
    out["explicit"] = {"mine_shard": list(mine.shard), "mine_epoch0": [rows(b) for b in mine],
                       "whole_shard": list(whole.shard), "whole_len": len(whole),
                       "whole_warnings": records.messages[before:]}
    out["log"] = records.messages
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
