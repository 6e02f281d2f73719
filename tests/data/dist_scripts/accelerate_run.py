"""One rank of ``torchrun --nproc_per_node 2 accelerate_run.py SPEC OUT`` with ``Accelerator(cpu=True)`` (Accelerate's
MULTI_CPU mode, gloo; ``accelerate launch --cpu`` starts one process on one machine), run by
tests/data/test_distributed.py: the data both ways Accelerate's users take it, each batch taking one optimizer step
of a model prepared by Accelerate (DistributedDataParallel: a rank with one batch more or fewer would hang until the
gloo timeout):

- ``loader``: ``accelerator.prepare(DataLoader(TileDataset(...), batch_size=None))``, as Accelerate's docs prepare
  every loader (rank 0 iterates it, Accelerate splits the batches between the ranks);
- ``pipe``: a ``histofast.Pipeline`` iterated without ``prepare`` (it shards itself by the process group);
- ``workers``: the prepared loader with ``num_workers=2``, which must be refused on every rank, with the message.

Writes ``OUT/rank<r>.json``: per way ``len`` and per epoch the batches as ``[slide, x, y, label, repeat]`` rows.

SPEC (JSON): ``{"timeout_s", "epochs", "paths", "labels", "options"}``."""
from __future__ import annotations

import faulthandler
import json
import os
import sys

import torch
from accelerate import Accelerator

import histofast as hf


def rows(batch: dict) -> list[list[int]]:
    return [list(r) for r in zip(*(batch[k].tolist() for k in ("slide", "x", "y", "label", "repeat")))]


def main() -> None:
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    faulthandler.dump_traceback_later(spec["timeout_s"], exit=True)
    os.makedirs(out_dir, exist_ok=True)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(net, optimizer)
    data = dict(labels=spec["labels"], progress=False, **spec["options"])
    ways = {"loader": accelerator.prepare(torch.utils.data.DataLoader(hf.TileDataset(spec["paths"], **data),
                                                                      batch_size=None)),
            "pipe": hf.Pipeline(spec["paths"], backend="torch", **data)}
    out: dict = {"rank": accelerator.process_index, "world": accelerator.num_processes,
                 "distributed_type": str(accelerator.distributed_type)}
    for name, batches in ways.items():
        result = {"len": len(batches), "epochs": []}
        for _ in range(spec["epochs"]):
            got = []
            for batch in batches:
                loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"], reduction="sum")
                optimizer.zero_grad()
                accelerator.backward(loss)  # gradients all-reduced across the ranks
                optimizer.step()
                got.append(rows(batch))
            result["epochs"].append(got)
        out[name] = result
    workers = accelerator.prepare(torch.utils.data.DataLoader(hf.TileDataset(spec["paths"], **data), batch_size=None,
                                                              num_workers=2))
    try:
        next(iter(workers))
        out["workers"] = "no error"
    except hf.HistofastError as e:
        out["workers"] = str(e)
    with open(os.path.join(out_dir, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(out, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
