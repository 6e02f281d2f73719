"""``python lightning_fit.py SPEC OUT``, run by tests/data/test_distributed.py: Lightning ``Trainer.fit`` for two
epochs on what a user would write, recording what each training step saw.

SPEC (JSON): ``{"timeout_s", "paths", "labels", "options", "runs": [{"name", "loader", "trainer"}]}`` where
``loader`` is ``{"kind": "pipeline"}`` (``train_dataloader`` returns a ``histofast.Pipeline`` built before
``fit``, without ``shard=``) or ``{"kind": "dataloader", "num_workers", "persistent_workers"}`` (a
``DataLoader(TileDataset, batch_size=None)``), and ``trainer`` the ``Trainer`` arguments beyond the common
ones. Each rank writes ``OUT/<name>.rank<r>.json``: ``len``, ``shard`` and per step its epoch, the
``[slide, x, y, label]`` rows and a fingerprint of each sample's pixels (its first pixel row's sum: a
rotation, flip or shift changes it); and the warnings raised while fitting. Lightning's ``ddp`` strategy runs
this script again for rank 1; ``ddp_spawn`` pickles the module into new processes."""
from __future__ import annotations

import faulthandler
import json
import os
import sys
import warnings

SPEC, OUT = sys.argv[1], sys.argv[2]
with open(SPEC) as f:
    spec = json.load(f)
faulthandler.dump_traceback_later(spec["timeout_s"], exit=True)  # a hung rank prints its stacks and exits
os.makedirs(OUT, exist_ok=True)

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import histofast as hf  # noqa: E402


class Recorder(pl.LightningModule):
    def __init__(self, name: str, loader: object) -> None:
        super().__init__()
        self.name, self.loader, self.steps = name, loader, []
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(4, 2))

    def train_dataloader(self) -> object:
        return self.loader

    def training_step(self, batch: dict, index: int) -> torch.Tensor:
        rows = [list(r) for r in zip(*(batch[k].tolist() for k in ("slide", "x", "y", "label")))]
        self.steps.append({"epoch": self.current_epoch, "rows": rows,
                           "prints": batch["image"][:, :, 0, :].sum((1, 2)).tolist()})
        return F.cross_entropy(self.net(batch["image"]), batch["label"], reduction="sum")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def on_train_end(self) -> None:
        pipe = self.loader if isinstance(self.loader, hf.Pipeline) else self.loader.dataset
        result = {"len": len(self.loader), "shard": list(pipe.shard), "steps": self.steps,
                  "world": self.trainer.world_size}
        with open(os.path.join(OUT, f"{self.name}.rank{self.trainer.global_rank}.json"), "w") as f:
            json.dump(result, f)


def main() -> None:
    for run in spec["runs"]:
        kind = run["loader"]["kind"]
        if kind == "pipeline":
            loader = hf.Pipeline(spec["paths"], labels=spec["labels"], progress=False, backend="torch",
                                 **spec["options"])
        else:
            dataset = hf.TileDataset(spec["paths"], labels=spec["labels"], progress=False, **spec["options"])
            loader = torch.utils.data.DataLoader(dataset, batch_size=None,
                                                 num_workers=run["loader"]["num_workers"],
                                                 persistent_workers=run["loader"]["persistent_workers"])
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, **run["trainer"])
        with warnings.catch_warnings(record=True) as caught:  # under the filters a user has: the defaults
            trainer.fit(Recorder(run["name"], loader))
        if trainer.global_rank == 0:
            with open(os.path.join(OUT, f"{run['name']}.warnings.json"), "w") as f:
                json.dump([f"{w.category.__name__}: {w.message}" for w in caught], f)


if __name__ == "__main__":
    main()
