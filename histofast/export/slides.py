"""Exporting kept tiles of slides: JPEG/PNG files or TFRecord shards, a manifest and a QC image per slide,
and ``OUT/manifest.csv`` over all slides.

Every file is written atomically, a slide's manifest last, so a rerun skips finished slides and
completes half-done ones (existing tiles and shards are kept, missing ones written)."""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..checks import check_device
from ..errors import HistofastError, SlideError
from ..io import open_slide
from ..io.decode import check_decode
from ..tiling import iter_tiles
from ..utils.atomic import atomic_open, atomic_write
from .options import ExportOptions
from .qc import write_qc
from .writer import TileWriter

log = logging.getLogger(__name__)

# The columns of a slide's manifest.csv and of OUT/manifest.csv: one row per kept tile.
TILE_MANIFEST_FIELDS = ("slide", "x", "y", "level", "level_x", "level_y", "tile_size", "white_ratio", "file", "record")


@dataclass
class SlideResult:
    """How one slide went: ``status`` is "done", "skipped" (finished by an earlier run) or "failed"."""

    slide: str
    status: str
    kept: int = 0
    total: int = 0
    seconds: float = 0.0
    error: str | None = None
    directory: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    decoder: str = ""  # what decoded the slide ("tiff", "openslide", "nvimgcodec-gpu", …; "" unless done)


def slide_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """An output folder name per slide: the file stem, made unique with the parent folder's name."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{Path(p).parent.name}_{s}" if Path(p).parent.name else s
            for s, p in zip(stems, paths)]


def export_slide(
    path: str | os.PathLike, out_dir: str | os.PathLike, options: ExportOptions, *,
    slide_id: str | None = None, workers: int | None = None, qc: bool = False, progress: Any = None,
    device: str = "cpu", decode: str = "auto",
) -> SlideResult:
    """Tile one slide into ``out_dir/<slide_id>/``: tiles or shards, ``grid.csv``, ``manifest.csv`` (last).

    ``device`` and ``decode`` say where tiles are scored and cut and what decodes them, as for ``iter_tiles``
    (tiles are encoded on the CPU). Raises on failure (``export_slides`` catches per slide). Temporary files
    never outlive an error.
    """
    start = time.perf_counter()
    slide_id = slide_id or Path(path).stem
    directory = Path(out_dir) / slide_id
    manifest = directory / "manifest.csv"
    settings = directory / "settings.json"
    key = options.key()
    previous = json.loads(settings.read_text()) if settings.exists() else key
    if previous != key:
        raise SlideError(path, f"{directory} holds an export with other settings; use another --out or remove it")
    if manifest.exists():
        rows = _read_manifest(manifest)
        total = len(_read_manifest(directory / "grid.csv"))
        return SlideResult(os.fspath(path), "skipped", len(rows), total, directory=os.fspath(directory), rows=rows)
    with open_slide(path, workers=workers) as slide:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(settings, json.dumps(key, indent=1).encode())
        stream = iter_tiles(
            slide, options.tile_size, options.stride, level=options.level, mpp=options.mpp,
            magnification=options.magnification, hsv_lower=options.hsv_lower, hsv_upper=options.hsv_upper,
            max_white=options.max_white, augment=options.augment, batch_size=64, device=device, decode=decode,
        )
        writer = TileWriter(Path(out_dir), slide_id, os.fspath(path), stream.grid.level, options,
                             workers or slide.workers)
        if progress is not None:
            progress.reset(total=stream.grid.white_ratio.shape[0])
        with writer:
            for batch in stream:
                if not isinstance(batch.images, np.ndarray):  # cut on a GPU: encoded on the host
                    batch = replace(batch, images=batch.images.cpu().numpy())
                writer.add(batch)
                if progress is not None:
                    progress.n = int(batch.level_coords[-1, 1]) // stream.grid.stride + 1
                    progress.refresh()
        grid = stream.grid
        grid.to_csv(directory / "grid.csv")
        if qc:
            write_qc(slide, grid, directory / "qc.png")
    with atomic_open(manifest, newline="") as f:
        w = csv.DictWriter(f, TILE_MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(writer.rows)
    return SlideResult(os.fspath(path), "done", len(grid), grid.white_ratio.size, time.perf_counter() - start,
                       directory=os.fspath(directory), rows=writer.rows, decoder=stream.decoder)



def _read_manifest(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def export_slides(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, options: ExportOptions, *,
    workers: int | None = None, qc: bool = False, progress: bool | None = None, device: str = "cpu",
    decode: str = "auto",
) -> list[SlideResult]:
    """Export every slide; one failing slide is reported and the others still finish.

    ``device``, ``decode``: as for ``export_slide``; checked before any slide is read.

    Writes ``out_dir/manifest.csv`` (all finished slides' manifests, atomically) at the end.
    ``progress``: tqdm bars per slide and overall (None: only on a terminal)."""
    from tqdm.auto import tqdm

    device = check_device(device)
    check_decode(decode, device)
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
                results.append(export_slide(path, out, options, slide_id=slide_id, workers=workers, qc=qc,
                                            progress=rows, device=device, decode=decode))
            except (HistofastError, OSError) as e:
                reason = e.reason if isinstance(e, SlideError) else str(e)
                log.error("%s: failed: %s", path, reason)
                results.append(SlideResult(os.fspath(path), "failed", error=reason))
            overall.update(1)
    with atomic_open(out / "manifest.csv", newline="") as f:
        w = csv.DictWriter(f, TILE_MANIFEST_FIELDS)
        w.writeheader()
        for r in results:
            w.writerows(r.rows)
    return results


def _writable(out: Path) -> None:
    """Create ``out`` and check files can be written in it, before any slide is read."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".histofast-write-test", b"")
        (out / ".histofast-write-test").unlink()
    except OSError as e:
        raise HistofastError(f"--out {out}: not a writable directory ({e.strerror or e})") from None
