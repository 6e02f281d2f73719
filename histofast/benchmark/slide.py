"""The slide ``histofast bench`` times: a generated Aperio SVS cached between runs (or the user's), and
the facts about it the report carries (size, compression, stored tiles, reader backend)."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from .. import synth
from ..io import open_slide
from ..utils.paths import cache_dirs

SYNTH_SEED = 0


def synthetic_slide(size: int, cache_dir: str | None, regenerate: bool, log: Callable[..., None],
                    glass: float = 0.5) -> Path:
    """The generated benchmark slide, ``glass`` of its area background, written once per (size, glass, synth
    source) and reused."""
    tissue = round(1 - glass, 6)
    # The synth module's source is part of the key: a changed generator never reuses an old file.
    key = hashlib.sha256(Path(synth.__file__).read_bytes()).hexdigest()[:12]
    name = f"synth-{size}x{size}-seed{SYNTH_SEED}-tissue{tissue:g}-{key}.svs"
    for directory in ([Path(cache_dir)] if cache_dir is not None else cache_dirs("bench")):
        path = directory / name
        if path.is_file() and not regenerate:
            log(f"using cached slide {path}")
            return path
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if cache_dir is not None:
                raise
            log(f"cannot use {directory} ({e}); trying the next cache directory")
            continue
        log(f"writing a {size}×{size} synthetic slide to {path} (once; later runs reuse it)")
        start = time.perf_counter()
        synth.write_slide(path, size, size, seed=SYNTH_SEED, tissue_fraction=tissue)
        log(f"slide written in {time.perf_counter() - start:.1f} s")
        return path
    tried = ", ".join(map(str, ([Path(cache_dir)] if cache_dir is not None else cache_dirs("bench"))))
    raise OSError(f"no writable cache directory for the generated slide (tried {tried}); use --cache-dir")


def synthetic_dicom(svs: Path, size: int, glass: float, log: Callable[..., None]) -> Path:
    """The generated benchmark slide as a DICOM WSI series (``synth_dicom.write_dicom_slide``: the same JPEG tiles),
    in a folder beside the cached SVS, written once; the path of its level-0 file."""
    from .. import synth_dicom

    folder = svs.with_suffix(".dicom")
    done = folder / "complete"  # written last: a half-written series is written again
    if done.is_file():
        log(f"using cached DICOM series {folder}")
        return Path(done.read_text().strip())
    log(f"writing the slide as a DICOM WSI series to {folder} (once)")
    start = time.perf_counter()
    first = synth_dicom.write_dicom_slide(folder, size, size, seed=SYNTH_SEED, tissue_fraction=round(1 - glass, 6))
    done.write_text(f"{first}\n")
    log(f"series written in {time.perf_counter() - start:.1f} s")
    return first


def describe_slide(path: Path, threads: int) -> tuple[dict[str, Any], Any]:
    """The slide's properties for the report, and its level-0 tifffile page (None if not a tiled TIFF)."""
    with open_slide(path, threads=threads) as slide:
        info: dict[str, Any] = {
            "path": str(path.resolve()), "file_bytes": path.stat().st_size,
            "level0_dimensions": list(slide.dimensions), "level_dimensions": [list(d) for d in slide.level_dimensions],
            "mpp": slide.mpp, "objective_power": slide.objective_power,
            "vendor": slide.properties.get("openslide.vendor"), "histofast_backend": slide.backend,
            "direct_levels": list(getattr(slide, "direct_levels", ())),
        }
        info["tile_width"], info["tile_height"] = slide.tile_shape(0)
        dims = slide.dimensions
    page = None
    try:
        import tifffile

        tif = tifffile.TiffFile(os.fspath(path))
    except Exception:  # not a TIFF at all: no decode limit
        info["compression"] = "unknown (not a TIFF)"
        return info, None
    for candidate in tif.pages:
        if candidate.is_tiled and (candidate.imagewidth, candidate.imagelength) == tuple(dims):
            page = candidate
            break
    if page is None:
        tif.close()
        info["compression"] = "unknown (no tiled level-0 page)"
        return info, None
    info.update(compression=_enum_name(tifffile.COMPRESSION, page.compression),
                photometric=_enum_name(tifffile.PHOTOMETRIC, page.photometric),
                stored_tiles=len(page.dataoffsets), tile_width=page.tilewidth, tile_height=page.tilelength)
    quality = next((part.split("=", 1)[1] for part in (page.description or "").replace("|", " ").split()
                    if part.startswith("Q=")), None)
    if quality is not None:
        info["jpeg_quality"] = quality
    return info, page  # the caller closes page.parent (the TiffFile); the decode limit reads with its own fd


def _enum_name(enum: Any, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)

