"""The fuzz suite's sandbox: histofast's public slide APIs and the reference readers, run in a child process.

``Worker.call(task, *args, timeout=...)`` runs one of ``TASKS`` in a spawned child and returns
``("ok", value)``, ``("raised", info)``, ``("crash", exit code)`` or ``("hang", seconds)``; a child that died or
hung is replaced, so one bad input never takes the test run down with it. The child's address space is
capped (``MEMORY_LIMIT``) so a bomb fails with MemoryError instead of waking the kernel's OOM killer.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
from pathlib import Path
from typing import Any

import numpy as np

MEMORY_LIMIT = 6 << 30
TILE = 256
WINDOW = 2048  # read_region reads each level from its origin, at most WINDOW² pixels
MAX_REFERENCE_PIXELS = 300_000_000
SAMPLED_TILES = 64  # iter_tiles / export: tiles whose pixels come back for comparison (first ones, then spread)


class NoReference(Exception):
    """No reference reader (OpenSlide, else Pillow) reads these pixels."""


# -- histofast, the code under test ---------------------------------------------------------------------------
def _sample(n: int) -> list[int]:
    return sorted(set(range(min(n, SAMPLED_TILES // 2))) | set(range(0, n, max(1, n // (SAMPLED_TILES // 2)))))


def api_read(path: str) -> dict[str, Any]:
    """``open_slide`` then ``read_region`` of every level from its origin (a window for huge levels)."""
    import histofast

    with histofast.open_slide(path) as slide:
        dims = [tuple(d) for d in slide.level_dimensions]
        regions = {level: slide.read_region((0, 0), level, (min(w, WINDOW), min(h, WINDOW)))
                   for level, (w, h) in enumerate(dims)}
        return {"dims": dims, "regions": regions}


def api_grid(path: str) -> dict[str, Any]:
    """``tile_grid(path, 256)``: the level-0 white ratios."""
    import histofast

    return {"white_ratio": histofast.tile_grid(path, TILE).white_ratio}


def api_tiles(path: str) -> dict[str, Any]:
    """``iter_tiles(path, 256)``: every kept tile's coords, a sample of their pixels, and the grid."""
    import histofast

    it = histofast.iter_tiles(path, TILE, batch_size=32)
    coords, images = [], []
    for batch in it:
        coords.append(batch.coords)
        images.append(batch.images)
    coords_all = np.concatenate(coords) if coords else np.zeros((0, 2), np.int64)
    pick = _sample(len(coords_all))
    pixels = np.concatenate(images)[pick] if images else np.zeros((0, TILE, TILE, 3), np.uint8)
    return {"coords": coords_all[pick], "images": pixels, "white_ratio": it.grid.white_ratio}


def api_export(path: str, good: str, out: str) -> dict[str, Any]:
    """``export_slides([path, good])`` as PNG tiles: each result, and the written tiles of each done slide."""
    from PIL import Image

    from histofast.export import ExportOptions, export_slides

    results = export_slides([path, good], out, ExportOptions(tile_size=TILE, format="png"), progress=False)
    summary = []
    for r in results:
        row: dict[str, Any] = {"slide": r.slide, "status": r.status, "error": r.error, "kept": r.kept}
        if r.status == "done":
            manifest = r.rows
            pick = _sample(len(manifest))
            row["coords"] = np.array([[int(manifest[i]["x"]), int(manifest[i]["y"])] for i in pick], np.int64)
            row["images"] = [np.asarray(Image.open(Path(out) / manifest[i]["file"]).convert("RGB"))
                             for i in pick]
            row["files_exist"] = all((Path(out) / m["file"]).is_file() for m in manifest)
        summary.append(row)
    return {"results": summary}


# -- the references -------------------------------------------------------------------------------------------
class Reference:
    """OpenSlide where it opens the file (RGBA on white, as tests/conftest.py), else Pillow (level 0 only)."""

    def __init__(self, path: str) -> None:
        import openslide
        from PIL import Image

        self.osr = self.image = None
        try:
            self.osr = openslide.OpenSlide(path)
            self.dims = [tuple(d) for d in self.osr.level_dimensions]
        except Exception as e:  # noqa: BLE001 - any refusal means "try Pillow"
            why = f"OpenSlide: {type(e).__name__}: {e}"
            try:
                with Image.open(path) as im:
                    self.image = np.asarray(im.convert("RGB"))
            except Exception as e2:  # noqa: BLE001
                raise NoReference(f"{why}; Pillow: {type(e2).__name__}: {e2}") from None
            self.dims = [(self.image.shape[1], self.image.shape[0])]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) of ``level`` at level pixels (x, y); level-0 (x, y) for levels > 0 is exact
        only at the origin, which is all the suite asks for at levels > 0."""
        if self.osr is None:
            if level:
                raise NoReference("Pillow reads level 0 only")
            out = np.full((h, w, 3), 255, np.uint8)
            part = self.image[y: y + h, x: x + w]
            out[: part.shape[0], : part.shape[1]] = part
            return out
        ds = self.osr.level_downsamples[level]
        rgba = np.asarray(self.osr.read_region((round(x * ds), round(y * ds)), level, (w, h)))
        return on_white(rgba)


def on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (straight alpha) over white as uint8 RGB: rint(rgb·a/255 + 255·(1 - a/255)), as tests/conftest.py, in
    integers (the quotient never ends in exactly .5, 255 being odd)."""
    alpha = rgba[..., 3:].astype(np.int32)
    if (alpha == 255).all():
        return np.ascontiguousarray(rgba[..., :3])
    return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def ref_read(path: str) -> dict[str, Any]:
    ref = Reference(path)
    return {"dims": ref.dims, "regions": {level: ref.read(level, 0, 0, min(w, WINDOW), min(h, WINDOW))
                                          for level, (w, h) in enumerate(ref.dims)}}


def ref_grid(path: str) -> dict[str, Any]:
    """Level-0 white ratios of the reference pixels (``ops.white_ratio``), read in bands of one tile row."""
    from histofast import ops

    ref = Reference(path)
    w, h = ref.dims[0]
    if w * h > MAX_REFERENCE_PIXELS:
        raise NoReference(f"level 0 {w}×{h} too large to read as a reference")
    if w < TILE or h < TILE:
        return {"white_ratio": np.zeros((max(0, h // TILE), max(0, w // TILE)), np.float32)}
    chunk = 16  # tile columns read at once: bounded memory for wide levels
    rows = [np.concatenate([ops.white_ratio(ref.read(0, c * TILE, r * TILE, min(chunk, w // TILE - c) * TILE, TILE),
                                            TILE, TILE) for c in range(0, w // TILE, chunk)], axis=1)
            for r in range(h // TILE)]
    return {"white_ratio": np.concatenate(rows)}


def ref_tiles(path: str, coords: np.ndarray) -> dict[str, Any]:
    """The reference level-0 tiles at ``coords`` (level-0 x, y)."""
    ref = Reference(path)
    return {"images": [ref.read(0, int(x), int(y), TILE, TILE) for x, y in coords]}


def selftest(what: str) -> None:
    """The sandbox's own check: "abort" kills the child with SIGABRT, "hang" never returns."""
    import time

    if what == "abort":
        os.abort()
    time.sleep(3600)


TASKS = {"selftest": selftest, "read": api_read, "grid": api_grid, "tiles": api_tiles, "export": api_export,
         "ref_read": ref_read, "ref_grid": ref_grid, "ref_tiles": ref_tiles}


# -- the child process ---------------------------------------------------------------------------------------
def _describe(e: BaseException) -> dict[str, Any]:
    from histofast.errors import HistofastError

    return {"type": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e),
            "histofast": isinstance(e, HistofastError), "os_or_value": isinstance(e, (OSError, ValueError)),
            "no_reference": isinstance(e, NoReference)}


def _serve(conn: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    import logging

    logging.disable(logging.CRITICAL)  # export_slides logs each failed slide: the result says it
    while True:
        task = conn.recv()
        if task is None:
            return
        name, args = task
        try:
            reply = ("ok", TASKS[name](*args))
        except Exception as e:  # noqa: BLE001 - the suite classifies every exception
            reply = ("raised", _describe(e))
        conn.send(reply)


class Worker:
    """A replaceable child process running ``TASKS``."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        child.close()

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
            self._proc = None

    def call(self, name: str, *args: Any, timeout: float) -> tuple[str, Any]:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send((name, args))
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except (EOFError, OSError):  # the child died: let it finish dying
            self._proc.join(10)
        if self._proc.is_alive():
            self._kill()
            return ("hang", timeout)
        self._proc.join()
        code = self._proc.exitcode
        self._kill()
        return ("crash", code)

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(10)
        self._kill()


def env_for_subprocess() -> dict[str, str]:
    """The environment for ``python -m histofast.cli``: this checkout first on the import path."""
    root = os.fspath(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
