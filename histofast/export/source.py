"""Which slide a slide folder belongs to: its name (``slide_ids``), and the source recorded in its
``settings.json`` (``fingerprint``), checked before anything in the folder counts as done (``check_source``)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import SlideError
from ..io import file_problem


def slide_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """An output folder name per slide, unique per source file among ``paths``.

    The file's stem; where stems collide, the parent folder's name is put in front when that tells the colliding
    files apart (``NORM/a.png``, ``ADC/a.png`` → ``NORM_a``, ``ADC_a``), else the suffix is added (``boxes.png``,
    ``boxes.tiff`` → ``boxes_png``, ``boxes_tiff``), else both; a name still shared (or the same file given twice)
    gets 8 hex digits of its absolute path's SHA-1."""
    stems = [Path(p).stem for p in paths]
    names = list(stems)
    for stem in set(stems):
        group = [i for i, s in enumerate(stems) if s == stem]
        if len(group) == 1:
            continue
        parents = [Path(paths[i]).parent.name for i in group]
        suffixes = [Path(paths[i]).suffix[1:].lower() for i in group]
        by_parent = all(parents) and len(set(parents)) == len(group)
        by_suffix = len(set(suffixes)) == len(group)
        for i, parent, suffix in zip(group, parents, suffixes):
            parts = [parent] if parent and not by_suffix or by_parent else []
            parts += [stem] + ([suffix] if suffix and not by_parent else [])
            names[i] = "_".join(parts)
    for i, name in enumerate(names):
        if names.count(name) > 1:
            digest = hashlib.sha1(os.path.abspath(paths[i]).encode("utf-8", "surrogateescape")).hexdigest()
            names[i] = f"{name}_{digest[:8]}"
    return names


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """The source recorded in a slide folder's ``settings.json``: the resolved path, the size in bytes and the
    modification time in ns of the file the slide is opened from. Raises a ``SlideError`` saying why when it is
    not a readable regular file (missing, a broken link, a FIFO …)."""
    problem = file_problem(path)
    if problem is not None:
        raise SlideError(path, problem)
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_source(directory: Path, recorded: dict[str, Any] | None, path: str | os.PathLike,
                 source: dict[str, Any]) -> None:
    """Raise a ``SlideError`` when ``directory`` (whose ``settings.json`` recorded ``recorded``) was made from
    another file than ``path`` (``source``: its ``fingerprint``), or from this file before it changed. A folder
    without a recorded source (written before sources were recorded) is taken as this slide's."""
    if recorded is None:
        return
    if recorded.get("path") != source["path"]:
        raise SlideError(path, f"{directory} holds the export of another slide, {recorded.get('path')} (this one is "
                               f"{source['path']}); use another --out or remove that folder")
    if (recorded.get("size"), recorded.get("mtime_ns")) != (source["size"], source["mtime_ns"]):
        raise SlideError(path, f"{directory} was exported from {source['path']} when it was {recorded.get('size')} "
                               f"bytes (mtime_ns {recorded.get('mtime_ns')}); it is now {source['size']} bytes "
                               f"(mtime_ns {source['mtime_ns']}): the file changed since; remove {directory} to "
                               "export it again")
