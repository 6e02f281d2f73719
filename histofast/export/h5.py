"""``--format h5``: a slide's kept-tile coordinates as the HDF5 patch files of the MIL tools users run next, so that
their feature extraction reads our output unchanged:

- CLAM (mahmoodlab/CLAM, ``create_patches_fp.py``; read by ``dataset_modules/dataset_h5.Whole_Slide_Bag_FP``):
  ``OUT/patches/<slide>.h5``;
- TRIDENT (mahmoodlab/TRIDENT, ``trident/IO.py coords_to_h5``; read by ``IO.read_coords`` and
  ``WSI.extract_patch_features``): ``OUT/<mag>x_<size>px_<overlap>px_overlap/patches/<slide>_patches.h5``, written
  when the slide's magnification is known (its objective power, else 10 / µm-per-pixel).

Each holds one dataset ``coords``: int64 (N, 2), the kept tiles' level-0 (x, y) top-left corners in the order of
``manifest.csv`` (row-major), with the attributes its tool reads. CLAM reads a tile as ``patch_size`` pixels of
level ``patch_level``; TRIDENT as ``patch_size`` pixels at ``target_magnification``, i.e. ``patch_size ·
level0_magnification / target_magnification`` level-0 pixels: both the tile ``histofast`` cut (a resampled view's
tile is ``tile_size · scale`` pixels of its level for CLAM). Written atomically (a temporary name, then a rename)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..tiling import TileGrid
from ..utils.atomic import atomic_path

H5_INSTALL = "pip install h5py"


def h5_paths(out_dir: Path, slide_id: str, grid: TileGrid, level0_magnification: float | None) -> dict[str, Path]:
    """Where the slide's coordinate files go: "clam" always, "trident" when the magnification is known."""
    paths = {"clam": out_dir / "patches" / f"{slide_id}.h5"}
    if level0_magnification is not None:
        folder = f"{_mag(level0_magnification / grid.downsample)}x_{grid.tile_size}px_{_overlap(grid)}px_overlap"
        paths["trident"] = out_dir / folder / "patches" / f"{slide_id}_patches.h5"
    return paths


def write_coords_h5(out_dir: Path, slide_id: str, grid: TileGrid, slide: Any) -> dict[str, Path]:
    """Write the slide's CLAM and TRIDENT coordinate files (see the module); returns their paths by tool."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise ImportError(f"--format h5 writes HDF5 with h5py, which is not installed ({H5_INSTALL})") from None
    magnification = level0_magnification(slide)
    paths = h5_paths(out_dir, slide_id, grid, magnification)
    coords = np.ascontiguousarray(grid.coords, np.int64).reshape(-1, 2)
    level_dim = np.array(slide.level_dimensions[grid.level], np.int64)
    downsample = float(slide.level_downsamples[grid.level])
    clam = {"patch_size": np.int64(round(grid.tile_size * grid.scale)), "patch_level": np.int64(grid.level),
            "downsample": np.array([downsample, downsample]), "downsampled_level_dim": level_dim,
            "level_dim": level_dim, "name": slide_id, "save_path": os.fspath(paths["clam"].parent)}
    _write(paths["clam"], coords, clam)
    if "trident" in paths:
        width, height = slide.dimensions
        trident = {"patch_size": np.int64(grid.tile_size), "patch_size_level0":
                   np.int64(round(grid.tile_size * grid.downsample)), "level0_magnification": magnification,
                   "target_magnification": magnification / grid.downsample, "overlap": np.int64(_overlap(grid)),
                   "name": slide_id, "savetodir": os.fspath(paths["trident"].parent.parent),
                   "level0_width": np.int64(width), "level0_height": np.int64(height)}
        _write(paths["trident"], coords, trident)
    return paths


def level0_magnification(slide: Any) -> float | None:
    """The objective power of level 0, else 10 / µm-per-pixel (40× at 0.25 µm/pixel), else None."""
    if slide.objective_power is not None:
        return float(slide.objective_power)
    return None if slide.mpp is None else 10.0 / slide.mpp


def _write(path: Path, coords: np.ndarray, attrs: dict[str, Any]) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:  # as both tools write it: resizable rows, chunked
            dset = f.create_dataset("coords", data=coords, maxshape=(None, 2),
                                    chunks=(max(1, min(len(coords), 1024)), 2))
            for key, value in attrs.items():
                dset.attrs[key] = value


def _overlap(grid: TileGrid) -> int:
    """TRIDENT's overlap: the tile side minus the step, pixels at the target magnification."""
    return grid.tile_size - grid.stride


def _mag(value: float) -> str:
    """A magnification as TRIDENT names its folders: 20 for 20.0, 2.5 for 2.5."""
    return f"{value:g}"
