"""Exporting kept tiles: JPEG/PNG files or TFRecord shards, a manifest and a QC image per slide.

Every file is written atomically, a slide's manifest last, so a rerun skips finished slides and
completes half-done ones (existing tiles and shards are kept, missing ones written)."""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_open, atomic_path, atomic_write
from .encode import encode_image
from .augment import Augment
from .errors import HistofastError, SlideError
from .grid import TileGrid, check_grid_args, iter_tiles
from .io import open_slide
from .ops import DEFAULT_HSV_LOWER, DEFAULT_HSV_UPPER
from .tfrecord import TFRecordWriter, tile_example

log = logging.getLogger(__name__)

FORMATS = ("jpg", "png", "tfrecord", "none")
MANIFEST_FIELDS = ("slide", "x", "y", "level", "level_x", "level_y", "tile_size", "white_ratio", "file", "record")
SHARD_TILES = 1024  # tiles per TFRecord shard


@dataclass(frozen=True)
class ExportOptions:
    """What to cut and how to write it (the settings a resumed run must share with the first)."""

    tile_size: int = 512
    stride: int | None = None
    level: int | None = None
    mpp: float | None = None
    magnification: float | None = None
    max_white: float = 0.5
    hsv_lower: tuple[int, int, int] = DEFAULT_HSV_LOWER
    hsv_upper: tuple[int, int, int] = DEFAULT_HSV_UPPER
    format: str = "jpg"
    quality: int = 90
    label: int = -1
    augment: Augment | None = None
    shard_tiles: int = SHARD_TILES

    def __post_init__(self) -> None:
        check_grid_args(self.tile_size, self.tile_size if self.stride is None else self.stride, self.hsv_lower,
                        self.hsv_upper, self.max_white)
        if self.format not in FORMATS:
            raise HistofastError(f"format={self.format!r}: expected one of {', '.join(FORMATS)}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise HistofastError(f"quality={self.quality!r}: must be an integer in 1..100")
        if isinstance(self.shard_tiles, bool) or not isinstance(self.shard_tiles, int) or self.shard_tiles <= 0:
            raise HistofastError(f"shard_tiles={self.shard_tiles!r}: must be a positive integer")

    def key(self) -> dict[str, Any]:
        """The settings as JSON-able values, stored beside a slide's output to detect changed reruns."""
        d = asdict(self)
        d["augment"] = None if self.augment is None else asdict(self.augment)
        d["hsv_lower"], d["hsv_upper"] = list(self.hsv_lower), list(self.hsv_upper)
        return d


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


def slide_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """An output folder name per slide: the file stem, made unique with the parent folder's name."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{Path(p).parent.name}_{s}" if Path(p).parent.name else s
            for s, p in zip(stems, paths)]


def export_slide(
    path: str | os.PathLike, out_dir: str | os.PathLike, options: ExportOptions, *,
    slide_id: str | None = None, workers: int | None = None, qc: bool = False, progress: Any = None,
) -> SlideResult:
    """Tile one slide into ``out_dir/<slide_id>/``: tiles or shards, ``grid.csv``, ``manifest.csv`` (last).

    Raises on failure (``export_slides`` catches per slide). Temporary files never outlive an error.
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
            max_white=options.max_white, augment=options.augment, batch_size=64,
        )
        writer = _TileWriter(Path(out_dir), slide_id, os.fspath(path), stream.grid.level, options,
                             workers or slide.workers)
        if progress is not None:
            progress.reset(total=stream.grid.white_ratio.shape[0])
        with writer:
            for batch in stream:
                writer.add(batch)
                if progress is not None:
                    progress.n = int(batch.level_coords[-1, 1]) // stream.grid.stride + 1
                    progress.refresh()
        grid = stream.grid
        grid.to_csv(directory / "grid.csv")
        if qc:
            write_qc(slide, grid, directory / "qc.png")
    with atomic_open(manifest, newline="") as f:
        w = csv.DictWriter(f, MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(writer.rows)
    return SlideResult(os.fspath(path), "done", len(grid), grid.white_ratio.size, time.perf_counter() - start,
                       directory=os.fspath(directory), rows=writer.rows)


class _TileWriter:
    """Encodes kept tiles in a thread pool and writes them as files or TFRecord shards, skipping
    files and shards a previous run finished; ``rows`` collects the manifest."""

    def __init__(self, out_dir: Path, slide_id: str, slide_path: str, level: int, options: ExportOptions,
                 workers: int) -> None:
        self.out_dir, self.slide_id, self.slide_path, self.options = out_dir, slide_id, slide_path, options
        self.level, self.workers = level, workers
        self.rows: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="histofast-encode")
        self._pending: list = []  # (row, future of encoded bytes or None)
        self._shard: list[tuple[dict[str, Any], Any]] = []

    def add(self, batch: Any) -> None:
        fmt = self.options.format
        for k in range(len(batch)):
            x, y = (int(v) for v in batch.coords[k])
            lx, ly = (int(v) for v in batch.level_coords[k])
            row = {"slide": self.slide_path, "x": x, "y": y, "level": self.level, "level_x": lx,
                   "level_y": ly, "tile_size": self.options.tile_size,
                   "white_ratio": f"{float(batch.white_ratio[k]):.9g}", "file": "", "record": ""}
            self.rows.append(row)
            if fmt == "none":
                continue
            if fmt == "tfrecord":
                shard = (len(self.rows) - 1) // self.options.shard_tiles
                row["file"], row["record"] = self._shard_name(shard), (len(self.rows) - 1) % self.options.shard_tiles
                done = (self.out_dir / row["file"]).exists() and (self.out_dir / (row["file"] + ".idx")).exists()
                self._shard.append((row, None if done else self._encode(batch.images[k], "jpg")))
                if len(self._shard) == self.options.shard_tiles:
                    self._flush_shard()
            else:
                row["file"] = f"{self.slide_id}/{self.slide_id}_x{x}_y{y}.{fmt}"
                target = self.out_dir / row["file"]
                if not target.exists():
                    self._pending.append((target, self._encode(batch.images[k], fmt)))
        self._drain(limit=4 * self.workers)

    def _encode(self, tile: np.ndarray, fmt: str) -> Any:
        return self._pool.submit(encode_image, np.ascontiguousarray(tile), fmt, self.options.quality)

    def _drain(self, limit: int = 0) -> None:
        """Write encoded files until at most ``limit`` are pending (bounds memory)."""
        while len(self._pending) > limit:
            target, future = self._pending.pop(0)
            atomic_write(target, future.result())

    def _shard_name(self, shard: int) -> str:
        return f"{self.slide_id}/{self.slide_id}-{shard:05d}.tfrecord"

    def _flush_shard(self) -> None:
        if not self._shard:
            return
        row0 = self._shard[0][0]
        if self._shard[0][1] is not None:  # not finished by an earlier run
            path = self.out_dir / row0["file"]
            with TFRecordWriter(path) as w:
                for row, future in self._shard:
                    w.write(tile_example(future.result(), label=self.options.label, slide=self.slide_id,
                                         x=row["x"], y=row["y"], level=row["level"], tile_size=row["tile_size"],
                                         fmt="jpg"))
        self._shard = []

    def __enter__(self) -> "_TileWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is None:
                self._drain()
                self._flush_shard()
        finally:
            for _, future in self._pending + self._shard:
                if future is not None:
                    future.cancel()
            self._pool.shutdown(wait=True)


def write_qc(slide: Any, grid: TileGrid, path: str | os.PathLike, max_size: int = 2048) -> None:
    """A PNG of the slide's thumbnail (at most ``max_size`` pixels a side) with the grid's decisions
    over it: the area kept tiles cover outlined green, the rest of the grid tinted red. Atomic."""
    from PIL import Image

    thumb = slide.thumbnail((max_size, max_size))
    scale = thumb.shape[1] / slide.dimensions[0]  # thumbnail pixels per level-0 pixel
    side = grid.tile_size * grid.downsample * scale
    kept = np.zeros(thumb.shape[:2], bool)
    for x, y in grid.coords * scale:
        kept[round(y) : round(y + side), round(x) : round(x + side)] = True
    rows, cols = grid.shape
    covered = np.zeros_like(kept)
    reach = (grid.stride * grid.downsample * scale * np.array([cols - 1, rows - 1])) + side
    covered[: round(reach[1]), : round(reach[0])] = True
    out = thumb.astype(np.float32)
    out[covered & ~kept] = 0.65 * out[covered & ~kept] + 0.35 * np.array([230, 30, 30])
    w = max(1, max_size // 512)
    inner = np.zeros_like(kept)
    inner[w:-w, w:-w] = kept[w:-w, w:-w] & kept[:-2 * w, w:-w] & kept[2 * w:, w:-w] & kept[w:-w, :-2 * w] & kept[w:-w, 2 * w:]
    out[kept & ~inner] = (20, 170, 60)
    with atomic_path(path) as tmp:
        Image.fromarray(out.round().astype(np.uint8)).save(tmp, format="PNG")


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def export_slides(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, options: ExportOptions, *,
    workers: int | None = None, qc: bool = False, progress: bool | None = None,
) -> list[SlideResult]:
    """Export every slide; one failing slide is reported and the others still finish.

    Writes ``out_dir/manifest.csv`` (all finished slides' manifests, atomically) at the end.
    ``progress``: tqdm bars per slide and overall (None: only on a terminal)."""
    from tqdm.auto import tqdm

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
                                            progress=rows))
            except (HistofastError, OSError) as e:
                reason = e.reason if isinstance(e, SlideError) else str(e)
                log.error("%s: failed: %s", path, reason)
                results.append(SlideResult(os.fspath(path), "failed", error=reason))
            overall.update(1)
    with atomic_open(out / "manifest.csv", newline="") as f:
        w = csv.DictWriter(f, MANIFEST_FIELDS)
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
