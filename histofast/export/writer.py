"""``TileWriter``: a slide's kept tiles encoded in a thread pool and written as JPEG/PNG files or TFRecord
shards, atomically, skipping files and shards an earlier run finished; it collects the manifest rows."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_write
from ..utils.encode import encode_image
from .settings import ExportOptions
from .tfrecord import TFRecordWriter, tile_example


class TileWriter:
    """Encodes kept tiles in a thread pool and writes them as files or TFRecord shards, skipping
    files and shards a previous run finished; ``rows`` collects the manifest."""

    def __init__(self, out_dir: Path, slide_id: str, slide_path: str, level: int, options: ExportOptions,
                 threads: int) -> None:
        self.out_dir, self.slide_id, self.slide_path, self.options = out_dir, slide_id, slide_path, options
        self.level, self.threads = level, threads
        self.rows: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="histofast-encode")
        self._pending: list = []  # (row, future of encoded bytes or None)
        self._shard: list[tuple[dict[str, Any], Any]] = []

    def add(self, batch: Any) -> None:
        fmt = self.options.format
        for k in range(len(batch)):
            x, y = (int(v) for v in batch.coords[k])
            lx, ly = (int(v) for v in batch.grid_coords[k])
            row = {"slide": self.slide_path, "x": x, "y": y, "level": self.level, "level_x": lx,
                   "level_y": ly, "tile_size": self.options.grid.tile_size,
                   "white_ratio": f"{float(batch.white_ratio[k]):.9g}", "file": "", "record": ""}
            self.rows.append(row)
            if fmt in ("none", "h5"):  # no pixels written (h5: the coordinates, once the slide is done)
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
        self._drain(limit=4 * self.threads)

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

    def __enter__(self) -> "TileWriter":
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

