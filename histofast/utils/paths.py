"""Where histofast keeps files it makes for the user between runs (generated demo and benchmark slides)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dirs(name: str) -> list[Path]:
    """Candidate folders for ``name``, best first: ``$XDG_CACHE_HOME/histofast/<name>`` (default
    ``~/.cache/histofast/<name>``), then ``<system temp>/histofast-<name>`` for when that is not writable."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(base) / "histofast" / name, Path(tempfile.gettempdir()) / f"histofast-{name}"]


def writable_cache_dir(name: str) -> Path:
    """The first of ``cache_dirs(name)`` that can be created and written; OSError when none can."""
    errors = []
    for directory in cache_dirs(name):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if os.access(directory, os.W_OK):
                return directory
            errors.append(f"{directory}: not writable")
        except OSError as e:
            errors.append(f"{directory}: {e.strerror or e}")
    raise OSError(f"no writable cache folder for {name} ({'; '.join(errors)})")
