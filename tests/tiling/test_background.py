"""Thumbnail-guided tiling (GridSpec(skip_background=True)): the stored tiles of glass are not decoded, every
decoded tile is decided exactly as before, and on generated slides no decision differs from the exact scan."""
from __future__ import annotations

import numpy as np
import pytest

import histofast as hf
from histofast import ops
from histofast.specs import BatchFormat, GridSpec
from histofast.tiling import background


@pytest.fixture(scope="module")
def glassy(make_slide):
    """4096² with 30 % tissue: levels 1 and 4× (1024²), stored tiles of 256."""
    return make_slide(4096, 4096, seed=11, tissue_fraction=0.3)


def _decoded_tiles(monkeypatch) -> list[int]:
    """Counts the stored tiles the CPU scan decodes (through the fused decode-and-count op)."""
    seen = [0]
    fused = ops.decode_jpegs_counting_white

    def counting(datas, *args, **kwargs):
        seen[0] += len(datas)
        return fused(datas, *args, **kwargs)

    monkeypatch.setattr(ops, "decode_jpegs_counting_white", counting)
    return seen


@pytest.mark.parametrize("tile, stride", [(256, 256), (512, 256), (384, 320)])
def test_skipping_glass_decides_every_tile_as_the_exact_scan(glassy, monkeypatch, tile, stride):
    exact = hf.tile_grid(glassy, tile, stride)
    seen = _decoded_tiles(monkeypatch)
    fast = hf.tile_grid(glassy, tile, stride, skip_background=True)
    assert exact.skipped is None and fast.skipped.shape == exact.shape
    assert 0.3 < fast.skipped.mean() < 1 - exact.keep.mean() + 1e-9  # most of the glass, never more than all of it
    np.testing.assert_array_equal(fast.keep, exact.keep)
    np.testing.assert_array_equal(fast.white_ratio[~fast.skipped], exact.white_ratio[~fast.skipped])
    assert (fast.white_ratio[fast.skipped] == 1.0).all()
    stored = (4096 // 256) ** 2
    assert 0 < seen[0] < 0.75 * stored  # the glass was not decoded


@pytest.mark.parametrize("stain", [0.4, 0.35, 0.32])
def test_faint_tissue_near_the_white_bounds_is_not_skipped(make_slide, stain):
    """Pale sections (stain 0.35: the stroma just past OpenCV's S bound, tiles near max_white): the thumbnail's
    margins keep every tile the exact scan keeps."""
    pale = make_slide(4096, 4096, seed=12, tissue_fraction=0.4, stain=stain)
    exact = hf.tile_grid(pale, 256)
    fast = hf.tile_grid(pale, 256, skip_background=True)
    assert 0 < exact.keep.mean() < 0.4 and fast.skipped.mean() > 0.3
    np.testing.assert_array_equal(fast.keep, exact.keep)


def test_iter_tiles_skipping_glass_gives_the_exact_batches(glassy):
    augment = hf.Augment(rot90=True, flip=True, max_shift=20, seed=4)
    exact = list(hf.iter_tiles(glassy, 256, 192, augment=augment, batch_size=16))
    stream = hf.iter_tiles(glassy, 256, 192, augment=augment, batch_size=16, skip_background=True)
    fast = list(stream)
    assert stream.grid.skipped.any() and len(exact) == len(fast)
    for a, b in zip(exact, fast):  # shifts reach beyond each tile: the stored tiles they read were decoded too
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_array_equal(a.images, b.images)


def test_a_resampled_view_skips_glass_too(glassy):
    exact = hf.tile_grid(glassy, 128, mpp=0.6)  # level 0 is 0.25 µm/pixel: resampled by 2.4
    fast = hf.tile_grid(glassy, 128, mpp=0.6, skip_background=True)
    assert fast.scale != 1 and fast.skipped.any()
    np.testing.assert_array_equal(fast.keep, exact.keep)
    np.testing.assert_array_equal(fast.white_ratio[~fast.skipped], exact.white_ratio[~fast.skipped])


def test_nothing_is_skipped_without_a_coarser_level_or_when_every_tile_is_kept(make_slide, glassy):
    single = make_slide(1024, 1024, seed=3, tissue_fraction=0.3, min_level_size=4096)  # level 0 only
    grid = hf.tile_grid(single, 256, skip_background=True)
    assert not grid.skipped.any()
    np.testing.assert_array_equal(grid.keep, hf.tile_grid(single, 256).keep)
    everything = hf.tile_grid(glassy, 256, max_white=1.0, skip_background=True)
    assert not everything.skipped.any() and everything.keep.all()


def test_the_thumbnail_level_is_coarse_but_not_too_coarse(glassy):
    with hf.open_slide(glassy) as slide:
        view = hf.io.level.select_level(slide)
        spec = GridSpec(256, skip_background=True)
        found = background.find_background(view, spec, (16, 16))
        assert found.level == 1 and slide.level_downsamples[1] * background.MIN_THUMB_PIXELS <= 256
        assert background.find_background(view, GridSpec(16), (256, 256)) is None  # 16 px tiles: 4 thumb pixels


def test_skipped_tiles_travel_in_the_csv_and_an_old_csv_reads_exact(glassy, tmp_path):
    fast = hf.tile_grid(glassy, 256, skip_background=True)
    fast.to_csv(tmp_path / "g.csv")
    back = hf.TileGrid.from_csv(tmp_path / "g.csv")
    np.testing.assert_array_equal(back.skipped, fast.skipped)
    hf.tile_grid(glassy, 256).to_csv(tmp_path / "exact.csv")
    assert hf.TileGrid.from_csv(tmp_path / "exact.csv").skipped is None


def test_tile_dataset_with_skip_background_has_the_exact_samples(glassy):
    batch = BatchFormat(16, augment=None)
    exact = hf.TileDataset([glassy], grid=GridSpec(256), batch=batch, progress=False)
    fast = hf.TileDataset([glassy], grid=GridSpec(256, skip_background=True), batch=batch, progress=False)
    assert fast.samples.grids[0].skipped.any()
    np.testing.assert_array_equal(fast.samples.coords, exact.samples.coords)


def test_the_option_is_checked_and_offered_by_every_entry_point():
    with pytest.raises(hf.HistofastError, match="skip_background='yes': must be True or False"):
        GridSpec(skip_background="yes")
    from histofast.cli import build_parser
    from histofast.train import TrainConfig

    args = build_parser().parse_args(["tile", "x.svs", "--out", "o", "--skip-background"])
    assert args.skip_background is True
    assert TrainConfig(data="x.csv", skip_background=True).grid.skip_background is True


def test_histofast_tile_skip_background_writes_the_exact_tiles_and_marks_the_rest(glassy, tmp_path, capsys):
    import csv

    from histofast.cli import main

    for name, extra in (("exact", []), ("fast", ["--skip-background"])):
        assert main(["tile", str(glassy), "--out", str(tmp_path / name), "--tile-size", "256", "--format", "none",
                     "--qc", "--quiet", *extra]) == 0
    folder = {name: tmp_path / name / glassy.stem for name in ("exact", "fast")}

    def rows(name, file):
        with open(folder[name] / file, newline="") as f:
            return list(csv.DictReader(f))

    assert [(r["x"], r["y"]) for r in rows("fast", "manifest.csv")] == \
        [(r["x"], r["y"]) for r in rows("exact", "manifest.csv")]
    skipped = [r["skipped"] for r in rows("fast", "grid.csv")]
    assert "1" in skipped and set(r["skipped"] for r in rows("exact", "grid.csv")) == {"0"}
    assert (folder["fast"] / "qc.png").is_file()
    assert f"({skipped.count('1')} left undecoded as glass by --skip-background" in capsys.readouterr().out
