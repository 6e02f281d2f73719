"""``histofast train ARGS`` in one rank, as tests/train/test_distributed_train.py starts it under torchrun
(``python -m torch.distributed.run ... torchrun_train.py ARGS``).

It registers ``plain_cnn`` (SimpleCNN's layout without BatchNorm and dropout: one rank × batch 2B and two
ranks × batch B then train alike) and, on ranks other than 0, records every file the rank opens for writing,
creates, renames or removes under ``HISTOFAST_TEST_WATCH``; they are printed as ``rank R wrote PATH`` lines
when the rank exits."""
from __future__ import annotations

import atexit
import os
import sys

from torch import nn


def plain_cnn(num_classes: int = 2, widths: tuple[int, ...] = (8, 16)) -> nn.Module:
    layers: list[nn.Module] = []
    for cin, cout in zip((3, *widths[:-1]), widths):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))


def _watch(folder: str, rank: int) -> None:
    """Record this rank's writes under ``folder`` (an audit hook: builtin and os-level opens, renames, removals,
    new folders), printed at exit."""
    root = os.path.abspath(folder)
    seen: list[str] = []
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under(path: object) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            p = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return None
        return p if p == root or p.startswith(root + os.sep) else None

    def hook(event: str, args: tuple) -> None:
        try:
            if event == "open":
                path, mode, flags = args
                writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & write_flags)
                hit = under(path) if writes else None
            elif event in ("os.rename", "os.replace"):
                hit = under(args[0]) or under(args[1])
            elif event in ("os.remove", "os.unlink", "os.mkdir", "os.rmdir"):
                hit = under(args[0])
            else:
                return
            if hit:
                seen.append(f"{event} {hit}")
        except Exception:  # an audit hook must never break the code it watches
            pass

    sys.addaudithook(hook)
    atexit.register(lambda: print("".join(f"rank {rank} wrote {s}\n" for s in seen), end="", flush=True))


def main() -> int:
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0 and os.environ.get("HISTOFAST_TEST_WATCH"):
        _watch(os.environ["HISTOFAST_TEST_WATCH"], rank)
    from histofast.cli import main as histofast
    from histofast.models import MODELS

    MODELS["plain_cnn"] = plain_cnn
    return histofast(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
