"""Atomic file writes: write under a temporary name in the target directory, then rename.

A reader (or a resumed run) sees either the whole file or no file, never half of one."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import IO, Iterator

# The temporary names histofast writes under (here and in ``export.tfrecord``): ".NAME.<12 hex digits>.tmp".
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")


def temporary_name(name: str) -> str:
    """A fresh temporary file name for ``name`` (a file name, not a path), matching ``TEMPORARY_NAME``."""
    return f".{name}.{secrets.token_hex(6)}.tmp"


def stale_temporary_files(directory: str | os.PathLike) -> list[Path]:
    """The temporary files (``TEMPORARY_NAME``) directly in ``directory`` ([] when it does not exist): what a
    writer killed before its rename (kill -9, power loss) leaves behind."""
    try:
        with os.scandir(directory) as entries:
            return [Path(e.path) for e in entries
                    if TEMPORARY_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_stale_temporary_files(directory: str | os.PathLike) -> list[Path]:
    """Remove ``stale_temporary_files(directory)``; returns those removed. Only while nothing else writes
    in ``directory``: a live writer's temporary file looks the same."""
    removed = []
    for path in stale_temporary_files(directory):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary name beside ``path`` for the block to write; renamed onto ``path`` when the
    block succeeds, removed if it fails. (Not ``mkstemp``: its files are private, mode 0600.)"""
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` whose content appears at ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
