"""Folder locks, so two histofast runs (or threads, or Dask tasks) never write one output folder at once: an
exclusive ``flock`` (``msvcrt.locking`` on Windows) on ``FOLDER/.histofast.lock``. Across machines it holds as far
as the shared file system honours ``flock`` (Linux NFS clients map it to NFS byte-range locks).

The lock file holds its holder's pid (for the message of a run that finds the folder taken) and is removed on
release. The operating system drops a lock when its process dies, so a killed run never leaves a folder locked:
its lock file, left behind, is simply locked again by the next run."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from ..errors import HistofastError

LOCK_NAME = ".histofast.lock"

if os.name == "nt":
    import msvcrt

    def _lock(fd: int, blocking: bool) -> bool:
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except PermissionError:
                if not blocking:
                    return False
                time.sleep(0.1)

    def _release(fd: int, path: Path) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)
        with contextlib.suppress(OSError):  # fails while another run has it open: it is theirs then
            path.unlink()
else:
    import fcntl

    def _lock(fd: int, blocking: bool) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _release(fd: int, path: Path) -> None:
        with contextlib.suppress(OSError):  # while still locked, so a run waiting on it sees it gone, starts over
            path.unlink()
        os.close(fd)


class FolderLocked(HistofastError):
    """``directory`` is locked by another histofast run: ``pid`` (None when it cannot be read)."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory, self.pid = directory, pid
        super().__init__(f"{directory}: locked by another histofast run (pid {'?' if pid is None else pid})")


@contextlib.contextmanager
def folder_lock(directory: str | os.PathLike, *, blocking: bool) -> Iterator[None]:
    """Hold ``directory``'s lock for the block. The folder is created if missing, and removed again on release if
    this call created it and it is left empty. ``blocking=False``: raise ``FolderLocked`` at once when another run
    (or another lock in this process) holds it; ``True``: wait for it."""
    directory = Path(directory)
    path = directory / LOCK_NAME
    created = False
    while True:
        try:
            directory.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was just removed by a holder releasing it: again
            continue
        if not _lock(fd, blocking):
            os.close(fd)
            raise FolderLocked(directory, _holder(path))
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed that file before we got it: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        _release(fd, path)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(path: Path) -> int | None:
    """The pid a lock file names (None while its holder has not written it yet, or when it cannot be read)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
