"""Checkpoints: ``torch.save`` written atomically, read back with ``torch.load(weights_only=True)``, the model
rebuilt from one, and the random-number state a resumed run restores."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import HistofastError
from ..models import build_model, load_state
from ..utils.atomic import atomic_path

CHECKPOINT_FORMAT = "histofast.checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically: a crash mid-write leaves the previous checkpoint whole."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A histofast checkpoint, read with ``torch.load(weights_only=True)``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # reads only what is used
    except FileNotFoundError:
        raise HistofastError(f"checkpoint {os.fspath(path)}: no such file") from None
    except Exception as e:
        raise HistofastError(f"checkpoint {os.fspath(path)}: not readable with torch.load(weights_only=True) "
                             f"({e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise HistofastError(f"checkpoint {os.fspath(path)}: not a histofast checkpoint (for a bare state dict, use "
                             "--pretrained / load_pretrained)")
    return state


def model_from_checkpoint(state: dict[str, Any], source: str) -> nn.Module:
    """The checkpoint's model with its weights (on the CPU)."""
    model = build_model(state["model"], len(state["classes"]), **state["model_options"])
    load_state(model, state["state_dict"], f"checkpoint {source}")
    return model


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

