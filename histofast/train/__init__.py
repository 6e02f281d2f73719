"""Training and evaluation of ``histofast.models`` on what ``histofast.Pipeline`` makes.

``fit(TrainConfig(...))`` trains (``run``: checkpoints, exact resume, history, plots; under torchrun with DDP,
``distributed``); ``evaluate.evaluate``
scores a checkpoint (``histofast evaluate``). Inside: ``config`` (every setting, from flags, YAML/JSON or
Python), ``pipelines`` (the run's data), ``loop`` (a model over a pipeline), ``epoch`` (an epoch's metrics),
``checkpoint``, ``tta`` (8-view test-time augmentation), ``metrics`` (numpy), ``plots`` (matplotlib).

Submodules and names load on first use, so ``histofast.train.config`` (used to build ``histofast train``'s
flags) does not import PyTorch."""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "TrainConfig": "config", "fit": "run", "FitResult": "run", "describe": "run", "TrainingError": "loop",
    "forward": "loop", "run_epoch": "loop", "read_checkpoint": "checkpoint", "model_from_checkpoint": "checkpoint",
    "Evaluation": "evaluate",
}
_SUBMODULES = ("checkpoint", "config", "distributed", "epoch", "evaluate", "loop", "metrics", "pipelines",
               "plots", "run", "tta")


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_NAMES, *_SUBMODULES]
