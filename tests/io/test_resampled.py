"""A resampled view's scan (histofast.io.resampled): every view pixel handed over once, equal to one read of the
whole view, however the level is cut into strips, column groups and chunks and in whatever order the jobs run."""
from __future__ import annotations

import numpy as np
import pytest

from histofast import GridSpec, HistofastError, iter_tiles, ops, tile_grid
from histofast.io import open_slide, resampled
from histofast.io.level import select_level


@pytest.mark.parametrize("mpp", [0.5, 0.3, 0.93])  # scale 2, 1.2 and 3.72 of level 0
@pytest.mark.parametrize("small", [False, True], ids=["default", "small-groups-and-chunks"])
def test_scan_hands_over_the_view_once_whatever_the_order(make_slide, monkeypatch, mpp, small):
    path = make_slide(2500, 1900, seed=4, tissue_fraction=0.5, min_level_size=128)
    if small:  # column groups of two stored tiles, chunks of one
        monkeypatch.setattr(resampled, "STRIP_BYTES", 3 * 2 * 256 * 256)
        monkeypatch.setattr(resampled, "CHUNK_BYTES", 1)
    with open_slide(path, threads=1) as slide:
        view = select_level(slide, mpp=mpp)
        width, height = view.dimensions
        whole = view.read(0, 0, width, height)
        got, times = np.zeros_like(whole), np.zeros((height, width), np.int64)

        def on_part(part, x, y):
            h, w = part.shape[:2]
            got[y : y + h, x : x + w] = part
            times[y : y + h, x : x + w] += 1

        jobs = view.scan_jobs(height, on_part)
        if small:
            assert len({rows for rows, _ in jobs}) < len(jobs)  # several column groups per strip
        for _, job in jobs[::-1]:  # the later strip ends first: its edges wait for the earlier one
            job()
        assert (times == 1).all()
        np.testing.assert_array_equal(got, whole)
        times[...] = 0
        for k, (rows, job) in enumerate(jobs):  # in order: every row above `rows` is done when its jobs are
            job()
            if k + 1 == len(jobs) or jobs[k + 1][0] != rows:
                assert (times[:rows] == 1).all()


@pytest.mark.parametrize("threads", [1, 3])
def test_tile_grid_at_a_resampled_view_equals_white_ratio_of_the_view(make_slide, monkeypatch, threads):
    path = make_slide(2500, 1900, seed=4, tissue_fraction=0.5, min_level_size=128)
    monkeypatch.setattr(resampled, "CHUNK_BYTES", 1)
    with open_slide(path, threads=threads) as slide:
        view = select_level(slide, mpp=0.5)
        pixels = view.read(0, 0, *view.dimensions)
        grid = tile_grid(slide, 128, 96, mpp=0.5)
    np.testing.assert_array_equal(grid.white_ratio, ops.white_ratio(pixels, 128, 96))


@pytest.mark.parametrize("mpp", [0.5, 0.93])
def test_bands_of_a_resampled_view_equal_one_read(make_slide, monkeypatch, mpp):
    path = make_slide(2500, 1900, seed=4, tissue_fraction=0.5, min_level_size=128)
    monkeypatch.setattr(resampled, "CHUNK_BYTES", 1)
    with open_slide(path, threads=3) as slide:
        view = select_level(slide, mpp=mpp)
        width, height = view.dimensions
        whole = view.read(0, 0, width, height)
        for y, h in [(0, 1), (0, 300), (137, 333), (height - 50, 50)]:  # bands start anywhere in a stored tile
            seen = np.zeros((h, width), np.int64)

            def on_part(part, x, py, seen=seen, y=y):
                seen[py - y : py - y + part.shape[0], x : x + part.shape[1]] += 1

            band = np.empty((h, width, 3), np.uint8)
            slide.run(view.jobs(0, y, width, h, band, on_part))
            np.testing.assert_array_equal(band, whole[y : y + h])
            assert (seen == 1).all()


# ---------------------------------------------------------------- resample="dct"


def _draft_reference(path, scale: int) -> np.ndarray:
    """Level 0 decoded at 1/scale by Pillow's JPEG draft mode (its own libjpeg-turbo's DCT scaling), stored tile by
    stored tile (each a complete JPEG in a generated slide), cropped to the view: independent of histofast."""
    import io

    import tifffile
    from PIL import Image

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tw, th = page.tilewidth // scale, page.tilelength // scale
        across, down = -(-page.imagewidth // page.tilewidth), -(-page.imagelength // page.tilelength)
        out = np.empty((down * th, across * tw, 3), np.uint8)
        for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
            tif.filehandle.seek(offset)
            image = Image.open(io.BytesIO(tif.filehandle.read(count)))
            image.draft("RGB", (tw, th))
            ty, tx = divmod(index, across)
            out[ty * th : (ty + 1) * th, tx * tw : (tx + 1) * tw] = np.asarray(image.convert("RGB"))
        return out[: page.imagelength // scale, : page.imagewidth // scale]


@pytest.mark.parametrize("mpp", [0.5, 1.0])  # 1/2 and 1/4 of level 0
def test_dct_view_is_libjpegs_scaled_decode_and_its_grid_is_scored_exactly(make_slide, mpp):
    path = make_slide(2500, 1900, seed=4, tissue_fraction=0.5, min_level_size=1900)  # one level
    with open_slide(path, threads=3) as slide:
        view = select_level(slide, mpp=mpp, resample="dct")
        assert view.dct and view.level == 0 and view.scale == mpp / 0.25
        width, height = view.dimensions
        pixels = view.read(0, 0, width, height)
        np.testing.assert_array_equal(pixels, _draft_reference(path, int(view.scale)))
        np.testing.assert_array_equal(view.read(37, 51, 300, 200), pixels[51:251, 37:337])
        grid = tile_grid(slide, 128, 96, mpp=mpp, resample="dct")
        assert grid.resample == "dct" and grid.scale == view.scale and grid.mpp == pytest.approx(mpp)
        np.testing.assert_array_equal(grid.white_ratio, ops.white_ratio(pixels, 128, 96))
        stream = iter_tiles(slide, 128, 96, mpp=mpp, resample="dct")
        tiles = np.concatenate([b.images for b in stream])
        np.testing.assert_array_equal(stream.grid.white_ratio, grid.white_ratio)
        x, y = grid.grid_coords[0]
        np.testing.assert_array_equal(tiles[0], pixels[y : y + 128, x : x + 128])
        back = next(iter(grid.tiles(slide)))  # the grid reads its tiles again the same way
        np.testing.assert_array_equal(back.images[0], tiles[0])
        skipping = tile_grid(slide, 128, 96, mpp=mpp, resample="dct", skip_background=True)
        decoded = ~skipping.skipped
        np.testing.assert_array_equal(skipping.white_ratio[decoded], grid.white_ratio[decoded])
        triangle = tile_grid(slide, 128, 96, mpp=mpp)
        assert triangle.resample == "triangle" and np.abs(triangle.white_ratio - grid.white_ratio).max() < 0.05


def test_dct_falls_back_to_the_triangle_filter_and_says_so(make_slide, caplog):
    path = make_slide(2500, 1900, seed=4, tissue_fraction=0.5, min_level_size=128)
    with open_slide(path) as slide:
        with caplog.at_level("WARNING", logger="histofast"):
            view = select_level(slide, mpp=0.6, resample="dct")  # 2.4× of level 0: no DCT scale
        assert not view.dct and view.scale == pytest.approx(2.4)
        assert "resample='dct' cannot" in caplog.text and "1/2, 1/4, 1/8 only" in caplog.text
        assert tile_grid(slide, 128, mpp=0.6, resample="dct").resample == "triangle"
        assert not select_level(slide, level=1, resample="dct").dct  # a level as stored is not resampled at all
    with pytest.raises(HistofastError, match="resample='box': expected 'triangle'"):
        GridSpec(256, resample="box")


def test_a_level_is_read_scaled_only_where_dct_scaling_serves_it(make_slide):
    path = make_slide(2500, 1900, seed=4, tissue_fraction=0.5, min_level_size=1900)
    with open_slide(path) as fast, open_slide(path, backend="openslide") as other:
        assert fast.dct_scales(0) == (2, 4, 8) and other.dct_scales(0) == ()
        for call in (lambda: fast.scan_jobs(0, 100, lambda *a: None, scale=3),
                     lambda: other.scan_jobs(0, 100, lambda *a: None, scale=2),
                     lambda: other.region_jobs(0, (0, 0), (10, 10), scale=2)):
            with pytest.raises(HistofastError, match=r"scale=\d: level 0 of .* cannot be decoded scaled"):
                call()
