"""--format h5: the kept tiles' coordinates as CLAM's and TRIDENT's patch files. Neither tool is on PyPI, so their
readers are reproduced here from their sources:

- CLAM, mahmoodlab/CLAM @ 53e2409d (2025-04-14), dataset_modules/dataset_h5.py ``Whole_Slide_Bag_FP``: reads
  ``f['coords'].attrs['patch_level']`` and ``['patch_size']``, then for each row ``coord``
  ``wsi.read_region(coord, patch_level, (patch_size, patch_size)).convert('RGB')``; extract_features_fp.py opens
  ``os.path.join(data_h5_dir, 'patches', slide_id + '.h5')``.
- TRIDENT, mahmoodlab/TRIDENT @ a91fa849 (0.3.x), trident/IO.py ``read_coords`` (``dict(f['coords'].attrs)``,
  ``f['coords'][:]``) and WSI.extract_patch_features: needs ``patch_size``, ``level0_magnification`` and
  ``target_magnification`` (else it falls back to the CLAM reader), reads ``round(patch_size · src / dst)`` level-0
  pixels per row; files under ``<job>/<mag>x_<ps>px_<overlap>px_overlap/patches/<slide>_patches.h5``."""
from __future__ import annotations

import csv

import numpy as np
import openslide
import pytest

from histofast.cli import main

h5py = pytest.importorskip("h5py")


def _manifest(folder):
    with open(folder / "manifest.csv", newline="") as f:
        return [(int(r["x"]), int(r["y"])) for r in csv.DictReader(f)]


def clam_bag(h5_path, slide_path):
    """CLAM's Whole_Slide_Bag_FP, minus the torch Dataset around it: (coords, patches)."""
    with h5py.File(h5_path, "r") as f:
        dset = f["coords"]
        patch_level = f["coords"].attrs["patch_level"]
        patch_size = f["coords"].attrs["patch_size"]
        coords = dset[:]
    wsi = openslide.open_slide(str(slide_path))
    patches = [np.asarray(wsi.read_region(tuple(int(v) for v in c), int(patch_level),
                                          (int(patch_size), int(patch_size))).convert("RGB")) for c in coords]
    return coords, patches


def trident_coords(h5_path):
    """TRIDENT's IO.read_coords and the attributes its feature extraction requires: (attrs, coords)."""
    with h5py.File(h5_path, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords = f["coords"][:]
    for key in ("patch_size", "level0_magnification", "target_magnification"):
        if attrs.get(key) is None:
            raise KeyError(f"{key} missing: TRIDENT would fall back to the CLAM reader")
    return attrs, coords


@pytest.mark.parametrize("level, stride", [(0, 256), (1, 192)])
def test_clam_and_trident_read_the_kept_tiles_of_the_manifest(make_slide, tmp_path, level, stride):
    slide = make_slide(4096, 3072, seed=21, tissue_fraction=0.4, min_level_size=512)
    out = tmp_path / "out"
    args = ["tile", str(slide), "--out", str(out), "--tile-size", "256", "--stride", str(stride), "--level",
            str(level), "--quiet"]
    assert main([*args, "--format", "h5"]) == 0
    assert main([*args, "--format", "png", "--out", str(tmp_path / "png")]) == 0
    kept = _manifest(out / slide.stem)
    assert len(kept) >= 5

    coords, patches = clam_bag(out / "patches" / f"{slide.stem}.h5", slide)
    assert coords.dtype == np.int64 and [tuple(c) for c in coords] == kept
    png = tmp_path / "png" / slide.stem
    from PIL import Image

    for (x, y), patch in list(zip(kept, patches))[::3]:  # CLAM reads the pixels we cut
        np.testing.assert_array_equal(patch, np.asarray(Image.open(png / f"{slide.stem}_x{x}_y{y}.png")))

    downsample = 4 ** level
    folder = out / f"{40 // downsample:g}x_256px_{256 - stride}px_overlap" / "patches"
    attrs, coords = trident_coords(folder / f"{slide.stem}_patches.h5")
    assert [tuple(c) for c in coords] == kept
    assert attrs["level0_magnification"] == 40 and attrs["target_magnification"] == 40 / downsample
    assert round(attrs["patch_size"] * attrs["level0_magnification"] / attrs["target_magnification"]) == \
        attrs["patch_size_level0"] == 256 * downsample  # the level-0 extent TRIDENT reads per tile
    assert attrs["overlap"] == 256 - stride and (attrs["level0_width"], attrs["level0_height"]) == (4096, 3072)
    assert all(x < 4096 and y < 3072 for x, y in coords)  # get_tile_xy's bounds assertion


def test_a_slide_without_tissue_gets_empty_files_and_a_rerun_skips_it(make_slide, tmp_path):
    blank = make_slide(1024, 1024, seed=22, tissue_fraction=0.0)
    out = tmp_path / "out"
    assert main(["tile", str(blank), "--out", str(out), "--tile-size", "256", "--format", "h5", "--quiet"]) == 0
    with h5py.File(out / "patches" / f"{blank.stem}.h5", "r") as f:
        assert f["coords"].shape == (0, 2)
    assert main(["tile", str(blank), "--out", str(out), "--tile-size", "256", "--format", "h5", "--quiet"]) == 0
    assert not [p for p in (out / "patches").iterdir() if p.name.startswith(".")]  # no temporary left behind
