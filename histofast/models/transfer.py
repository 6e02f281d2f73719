"""Transfer learning: load a local state-dict file (torchvision's key layout, or a histofast checkpoint)
into a model, listing what did not fit; freeze the early layers of a model."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import HistofastError

log = logging.getLogger(__name__)

_WRAPPERS = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile prefixes
_NESTED = ("state_dict", "model_state_dict", "model")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: ``loaded`` keys; ``skipped`` keys left as initialised (head layers of
    another class count, optional modules such as aux heads), with reasons."""
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``d state dict at ``path``, read with ``weights_only=True``.

    Accepts a bare state dict or one nested under 'state_dict', 'model_state_dict' or 'model' (a histofast
    checkpoint keeps it under 'state_dict'); strips 'module.' and '_orig_mod.' key prefixes."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HistofastError(f"{os.fspath(path)}: no such file") from None
    except Exception as e:  # pickle errors, foreign formats
        raise HistofastError(f"{os.fspath(path)}: not a PyTorch state dict readable with weights_only=True "
                             f"({e})") from None
    for key in _NESTED:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise HistofastError(f"{os.fspath(path)}: holds no state dict (a mapping of names to tensors)")
    out = {}
    for key, value in data.items():
        for prefix in _WRAPPERS:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _heads(model: nn.Module) -> set[str]:
    """Names of the layers whose shape depends on the class count: the linear layers with ``num_classes`` outputs."""
    n = getattr(model, "num_classes", None) or getattr(getattr(model, "image_net", None), "num_classes", None)
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == n}


def _layer(key: str) -> str:
    return key.rsplit(".", 1)[0]


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> LoadReport:
    """Load the state-dict file at ``path`` (torchvision's key layout; nothing is downloaded) into ``model``.

    With ``strict=False`` (transfer learning), the class-count layers (the linear layers with
    ``num_classes`` outputs: ``fc``, aux classifiers) are left as initialised when their shape differs,
    and modules listed in ``model.optional_modules`` (aux heads) may be absent on either side; every
    other key must match in name and shape. ``strict=True``: every key must match.

    Raises:
        HistofastError: listing the missing, unexpected and mismatched keys when the file does not fit.
    """
    return load_state(model, read_state_dict(path), os.fspath(path), strict=strict)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, *, strict: bool = True) -> LoadReport:
    """``model.load_state_dict(state)`` with ``load_pretrained``'s rules, and an error that names ``source``
    and lists every missing, unexpected and mismatched key."""
    own = model.state_dict()
    heads = set() if strict else _heads(model)
    optional = () if strict else tuple(f"{m}." for m in getattr(model, "optional_modules", ()))
    report = LoadReport()
    missing, mismatched = [], []
    for key in own:
        if key not in state:
            if key.startswith(optional):
                report.skipped[key] = "not in the file"
            else:
                missing.append(key)
        elif state[key].shape != own[key].shape:
            if _layer(key) in heads:
                report.skipped[key] = f"shape {tuple(state[key].shape)} in the file, {tuple(own[key].shape)} here"
            else:
                mismatched.append(f"{key} {tuple(state[key].shape)} in the file vs {tuple(own[key].shape)}")
        else:
            report.loaded.append(key)
    unexpected = [k for k in state if k not in own and not k.startswith(optional)]
    if missing or unexpected or mismatched:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"{name}: {some(keys)}" for name, keys in
                 (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected)) if keys]
        raise HistofastError(f"{source} does not fit {type(model).__name__} "
                             f"({len(report.loaded)} of {len(own)} keys match); " + "; ".join(parts))
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    for key, why in report.skipped.items():
        log.info("%s: %s left as initialised (%s)", source, key, why)
    return report


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False  # a frozen BatchNorm normalises with, and never updates, its running statistics


def freeze(model: nn.Module, until: str) -> list[str]:
    """Fix the early layers of ``model``: every top-level child before the one named ``until`` stops
    training (no gradients; its BatchNorm layers use and keep their running statistics, even in
    ``model.train()``). Returns the frozen children's names.

    Raises:
        HistofastError: ``until`` is not a top-level child (the message lists them).
    """
    names = [name for name, _ in model.named_children()]
    if until not in names:
        raise HistofastError(f"until={until!r}: not a layer of {type(model).__name__}; "
                             f"its layers are {', '.join(names)}")
    frozen = names[: names.index(until)]
    for name in frozen:
        child = model.get_submodule(name)
        child.requires_grad_(False)
        for m in child.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(_keep_eval)
    return frozen
