"""Exporting kept tiles of slides: JPEG/PNG files or TFRecord shards, a manifest and a QC image per slide,
and ``OUT/manifest.csv`` over all slides.

Every file is written atomically, a slide's manifest last, so a rerun skips finished slides and
completes half-done ones (existing tiles and shards are kept, missing ones written). A slide's folder is locked
while it is exported, and ``OUT`` while its manifest is written, so runs into one ``OUT`` never mix
(``export.lock``)."""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..checks import check_count, check_device
from ..errors import HistofastError, SlideError, SmallerThanTileError
from ..io import open_slide
from ..io.decode import check_decode
from ..io.level import select_level
from ..renamed import renamed_keyword
from ..tiling import TileGrid, scan_tiles
from ..tiling.cut import tile_format
from ..utils.atomic import atomic_open, atomic_write, remove_stale_temporary_files
from .h5 import write_coords_h5
from .lock import LOCK_NAME, FolderLocked, folder_lock
from .qc import write_qc
from .settings import ExportOptions
from .source import check_source, fingerprint, slide_ids
from .writer import TileWriter

log = logging.getLogger(__name__)

# The columns of a slide's manifest.csv and of OUT/manifest.csv: one row per kept tile.
TILE_MANIFEST_FIELDS = ("slide", "x", "y", "level", "level_x", "level_y", "tile_size", "white_ratio", "file", "record")


@dataclass
class SlideResult:
    """How one slide went: ``status`` is "done", "skipped" (finished by an earlier run) or "failed".

    A slide without tissue, or smaller than one tile, is "done" with ``kept`` 0 (``total`` 0 and a ``warning``
    for the latter), not "failed"."""

    slide: str
    status: str
    kept: int = 0
    total: int = 0
    seconds: float = 0.0
    error: str | None = None
    directory: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    decoder: str = ""  # what decoded the slide ("tiff", "openslide", "nvimgcodec-gpu", …; "" unless done)
    warning: str | None = None  # why a done slide has 0 tiles when it is not the tissue test (smaller than a tile)
    undecoded: int = 0  # tiles skip_background decided from the thumbnail, not decoded (grid.csv's "skipped")


def export_slide(
    path: str | os.PathLike, out_dir: str | os.PathLike, options: ExportOptions, *,
    slide_id: str | None = None, threads: int | None = None, qc: bool = False, progress: Any = None,
    device: str = "cpu", decode: str = "auto", **deprecated: Any,
) -> SlideResult:
    """Tile one slide into ``out_dir/<slide_id>/``: tiles or shards, ``grid.csv``, ``manifest.csv`` (last).

    ``device`` and ``decode`` say where tiles are scored and cut and what decodes them, as for ``iter_tiles``
    (tiles are encoded on the CPU). ``threads``: decode/encode threads (default: all cores; ``workers=``, its 0.x
    name, still works for this release with a ``FutureWarning``). Raises on failure (``export_slides`` catches per
    slide). Temporary files never outlive an error, and a (re)started export first removes those a killed run left
    in the slide's folder.

    ``settings.json`` (the options, so a rerun with other settings is refused, naming the settings that differ, and
    the slide's source: resolved path, size and mtime, so a folder made from another file, or from this one before
    it changed, is refused naming both, before anything in it counts as done) is written only when the slide
    starts producing output, and removed again when this attempt fails with nothing exported: a slide that
    failed before writing anything never blocks a corrected rerun.

    The slide's folder is locked from the settings check to the end (``export.lock``): while another run
    exports the slide, this one raises a ``SlideError`` at once ("being exported by another histofast run").

    A slide (level) smaller than one tile is exported as 0 tiles, like a slide without tissue: status "done",
    an empty grid and manifest, and ``warning`` saying why (``tile_grid``/``iter_tiles`` on it raise a
    ``SlideError``).
    """
    threads = renamed_keyword(deprecated, "export_slide", "workers", "threads", threads)
    if deprecated:
        raise TypeError(f"export_slide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
    start = time.perf_counter()
    slide_id = slide_id or Path(path).stem
    directory = Path(out_dir) / slide_id
    with contextlib.ExitStack() as held:
        try:  # creates the folder, and removes it again if this attempt leaves it empty
            held.enter_context(folder_lock(directory, blocking=False))
        except FolderLocked as e:
            raise SlideError(path, f"{directory} is being exported by another histofast run "
                                   f"(pid {'?' if e.pid is None else e.pid})") from None
        settings = directory / "settings.json"
        key = options.key()
        source = fingerprint(path)
        previous = ExportOptions.recorded(json.loads(settings.read_text())) if settings.exists() else None
        if previous is not None:
            check_source(directory, previous.pop("source", None), path, source)
            if previous != key:
                raise SlideError(path, f"{directory} holds an export with other settings ({_differences(previous, key)}"
                                       "); use another --out or remove it")
        if finished(directory):
            rows = _read_manifest(directory / "manifest.csv")
            total = len(_read_manifest(directory / "grid.csv"))
            return SlideResult(os.fspath(path), "skipped", len(rows), total, directory=os.fspath(directory),
                               rows=rows)
        remove_stale_temporary_files(directory)  # a killed attempt's: under the lock nothing else writes here
        output = _Output(directory, settings, {**key, "source": source}, fresh=previous is None)
        try:
            result = _export(path, Path(out_dir), slide_id, options, output, threads, qc, progress, device, decode)
        except BaseException:
            output.undo()
            raise
    result.seconds = time.perf_counter() - start
    return result


def _differences(recorded: dict[str, Any], key: dict[str, Any]) -> str:
    """The settings that differ between a folder's ``settings.json`` and this export, e.g. "tile_size 512 there,
    256 now"."""
    names = sorted(set(recorded) | set(key), key=lambda k: (k not in key, k))
    return "; ".join(f"{k} {json.dumps(recorded.get(k))} there, {json.dumps(key.get(k))} now" for k in names
                     if recorded.get(k) != key.get(k))


def finished(directory: Path) -> bool:
    """Whether ``directory`` holds a finished slide export: its ``manifest.csv``, written last."""
    return (directory / "manifest.csv").is_file()


class _Output:
    """A slide's ``settings.json``, written on the first ``start()`` (just before the first output file);
    ``undo()`` removes it again after a failure when this attempt wrote it and nothing else was exported (the
    folder lock then removes the folder it created)."""

    def __init__(self, directory: Path, settings: Path, key: dict[str, Any], fresh: bool) -> None:
        self.directory, self.settings, self.key, self.fresh = directory, settings, key, fresh
        self._wrote = False

    def start(self) -> None:
        if self._wrote or not self.fresh:
            return
        atomic_write(self.settings, json.dumps(self.key, indent=1).encode())
        self._wrote = True

    def undo(self) -> None:
        if not self._wrote:
            return
        try:
            if any(p.name not in (self.settings.name, LOCK_NAME) for p in self.directory.iterdir()):
                return  # tiles or shards of this attempt: a rerun with these settings resumes them
            self.settings.unlink()
        except OSError as e:  # the failure that brought us here is the one to report
            log.debug("%s: not cleaned up after a failure: %s", self.directory, e)


def _export(path: str | os.PathLike, out_dir: Path, slide_id: str, options: ExportOptions, output: _Output,
            threads: int | None, qc: bool, progress: Any, device: str, decode: str) -> SlideResult:
    directory = out_dir / slide_id
    with open_slide(path, threads=threads) as slide:
        spec = options.grid
        view = select_level(slide, *spec.view_args())
        width, height = view.dimensions
        warning = None
        if spec.tile_size > min(width, height):  # iter_tiles refuses it; an export has 0 tiles
            small = SmallerThanTileError(path, view.level, (width, height), spec.tile_size)  # tile_grid's words
            warning = f"{small.reason}: 0 tiles"
            log.warning("%s: %s", path, warning)
            grid = TileGrid(os.fspath(slide.path), view.level, spec.tile_size, spec.stride, np.ones((0, 0), np.float32),
                            spec.max_white, view.downsample, view.scale, view.mpp, slide.backend,
                            resample=view.resample)
            rows: list[dict[str, Any]] = []
            output.start()
            if progress is not None:
                progress.reset(total=0)
        else:
            batch_format, _ = tile_format({"augment": options.augment})
            stream = scan_tiles(slide, spec, batch_format, device=device, decode=decode)
            writer = TileWriter(out_dir, slide_id, os.fspath(path), stream.grid.level, options,
                                threads or slide.threads)
            if progress is not None:
                progress.reset(total=stream.grid.white_ratio.shape[0])
            with writer:
                for batch in stream:
                    output.start()  # pixels decoded: the export produces output from here on
                    if not isinstance(batch.images, np.ndarray):  # cut on a GPU: encoded on the host
                        batch = replace(batch, images=batch.images.cpu().numpy())
                    writer.add(batch)
                    if progress is not None:
                        progress.n = int(batch.grid_coords[-1, 1]) // stream.grid.stride + 1
                        progress.refresh()
            grid, rows = stream.grid, writer.rows
            output.start()  # no kept tiles: grid.csv is the first output
        grid.to_csv(directory / "grid.csv")
        if qc:
            write_qc(slide, grid, directory / "qc.png")
        if options.format == "h5":  # CLAM's and TRIDENT's patch files, before the manifest that says "done"
            write_coords_h5(out_dir, slide_id, grid, slide)
    with atomic_open(directory / "manifest.csv", newline="") as f:
        w = csv.DictWriter(f, TILE_MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return SlideResult(os.fspath(path), "done", len(grid), grid.white_ratio.size, directory=os.fspath(directory),
                       rows=rows, decoder=grid.decoder, warning=warning,
                       undecoded=0 if grid.skipped is None else int(grid.skipped.sum()))


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def export_slides(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, options: ExportOptions, *,
    threads: int | None = None, qc: bool = False, progress: bool | None = None, device: str = "cpu",
    decode: str = "auto", **deprecated: Any,
) -> list[SlideResult]:
    """Export every slide; one failing slide (whatever it raised, but ``KeyboardInterrupt`` and ``SystemExit``)
    is reported and the others still finish. A slide without tissue or smaller than one tile is "done" with 0
    tiles (see ``export_slide``), not a failure; a slide another run is exporting "failed", untouched.

    ``threads``, ``device``, ``decode``: as for ``export_slide``; checked before any slide is read.

    Writes ``out_dir/manifest.csv`` at the end (``write_top_manifest``: every finished slide in ``out_dir``).
    ``progress``: tqdm bars per slide and overall (None: only on a terminal)."""
    from tqdm.auto import tqdm

    threads = renamed_keyword(deprecated, "export_slides", "workers", "threads", threads)
    if deprecated:
        raise TypeError(f"export_slides() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
    device = check_device(device)
    check_decode(decode, device)
    if threads is not None:
        check_count(threads, "threads")
    out = Path(out_dir)
    _writable(out)
    results: list[SlideResult] = []
    disable = None if progress is None else not progress
    ids = slide_ids(paths)
    with tqdm(total=len(paths), desc="slides", unit="slide", disable=disable, position=0) as overall, \
            tqdm(desc="tile rows", unit="row", disable=disable, position=1, leave=False) as rows:
        for path, slide_id in zip(paths, ids):
            rows.set_description(Path(path).name)
            try:
                results.append(export_slide(path, out, options, slide_id=slide_id, threads=threads, qc=qc,
                                            progress=rows, device=device, decode=decode))
            except Exception as e:  # any error fails this slide only (a bug, MemoryError…); ^C stops the run
                results.append(failed(path, e))
            overall.update(1)
    write_top_manifest(out)
    return results


def failed(path: str | os.PathLike, error: Exception) -> SlideResult:
    """The "failed" result of a slide that raised ``error``, logged; the reason names the exception's type
    unless it is one of histofast's or an ``OSError`` (their messages say what happened)."""
    if isinstance(error, SlideError):
        reason = error.reason
    elif isinstance(error, (HistofastError, OSError)):
        reason = str(error)
    else:
        reason = f"{type(error).__name__}: {error}"
        log.debug("%s: traceback", path, exc_info=error)
    log.info("%s: failed: %s", path, reason)  # the result carries the reason: callers report it (once)
    return SlideResult(os.fspath(path), "failed", error=reason)


def write_top_manifest(out: Path) -> None:
    """``OUT/manifest.csv``: the manifests of every finished slide folder in ``out`` (by folder name, earlier
    runs' too), streamed row by row, written atomically under ``out``'s lock so that runs finishing together
    never drop each other's slides. Raises ``HistofastError`` when it cannot be written (a full disk)."""
    target = out / "manifest.csv"
    try:
        with folder_lock(out, blocking=True):
            remove_stale_temporary_files(out)  # a killed run's top manifest: under the lock nothing else writes it
            with atomic_open(target, newline="") as f:
                w = csv.DictWriter(f, TILE_MANIFEST_FIELDS)
                w.writeheader()
                for directory in sorted(p for p in out.iterdir() if p.is_dir() and finished(p)):
                    with open(directory / "manifest.csv", newline="") as m:
                        w.writerows(csv.DictReader(m))
    except OSError as e:
        raise HistofastError(f"{target}: not written ({e.strerror or e}); the slides' own folders are complete "
                             "and a rerun writes it") from None


def _writable(out: Path) -> None:
    """Create ``out`` and check files can be written in it, before any slide is read (under a unique name:
    runs starting together never remove each other's probe)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".histofast-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HistofastError(f"--out {out}: not a writable directory ({e.strerror or e})") from None
