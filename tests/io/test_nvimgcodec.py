"""The nvImageCodec reader: its CPU backend runs the GPU decode path's code (everything but the device
decode call) and must give the CPU fast path's pixels exactly, hence OpenSlide's; tile_grid, iter_tiles
and Pipeline through it give the same grids and batches; bad input gives clear errors. The GPU cases
(marked ``gpu``) measure nvJPEG against libjpeg-turbo: a few levels at most, keep decisions nearly all equal."""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import histofast
from histofast import synth
from histofast.errors import HistofastError, SlideError
from histofast.io import decode as decode_module
from histofast.io import nvimgcodec
from histofast.io.bands import SlideRows, read_bands
from histofast.io.decode import open_rows
from histofast.io.level import LevelView

pytestmark = pytest.mark.skipif(not nvimgcodec.nvimgcodec_installed(), reason="nvImageCodec is not installed")


def _tiff(path, image, **options):
    tifffile.imwrite(path, image, tile=(256, 256), photometric=options.pop("photometric", "rgb"), **options)
    return path


@pytest.fixture(scope="module")
def generic_tiffs(tmp_path_factory):
    """Generic tiled TIFFs, each under its own name (nvImageCodec maps files: never rewrite one in place)."""
    root = tmp_path_factory.mktemp("tiffs")
    image = synth.tissue_image(1100, 1300, seed=3)  # not a multiple of the tile: partial edge tiles
    return {
        "jpeg-rgb": _tiff(root / "rgb.tif", image, compression="jpeg", compressionargs={"level": 90}),
        "jpeg-ycbcr-420": _tiff(root / "ycc.tif", image, compression="jpeg", photometric="ycbcr",
                                subsampling=(2, 2)),
        "lzw": _tiff(root / "lzw.tif", image, compression="lzw"),
        "deflate": _tiff(root / "deflate.tif", image, compression="deflate"),
        "none": _tiff(root / "none.tif", image),
    }


def _rows(path, decode, level=0):
    slide = histofast.open_slide(path)
    return slide, open_rows(LevelView(slide, level), decode)


def test_every_level_of_an_svs_equals_the_fast_path(make_slide, openslide_level):
    path = make_slide(4096, 3072, seed=21, min_level_size=128)
    with histofast.open_slide(path) as slide:
        assert slide.level_count >= 3
        for level in range(slide.level_count):
            rows = open_rows(LevelView(slide, level), "nvimgcodec-cpu")
            assert rows.name == "nvimgcodec-cpu"
            w, h = slide.level_dimensions[level]
            out = rows.empty((h, w, 3))
            rows.read(0, h, out).wait()
            rows.close()
            np.testing.assert_array_equal(out, openslide_level(path, level), err_msg=f"level {level}")


@pytest.mark.parametrize("kind", ["jpeg-rgb", "jpeg-ycbcr-420", "lzw", "deflate", "none"])
def test_generic_tiled_tiffs_equal_the_fast_path_at_random_regions(generic_tiffs, kind):
    rng = np.random.default_rng(7)
    decoder = nvimgcodec.NvDecoder("cpu", 2)
    try:
        with histofast.open_slide(generic_tiffs[kind]) as slide:
            offset, why = nvimgcodec.level_ifd(slide, 0)
            assert not why
            w, h = slide.level_dimensions[0]
            boxes = []
            for _ in range(12):
                x, y = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
                boxes.append((x, y, int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1))))
            outs = [decoder.empty((bh, bw, 3)) for _, _, bw, bh in boxes]
            decoder.decode_into(str(slide.path), offset, boxes, outs, "test regions").wait()
            for (x, y, bw, bh), out in zip(boxes, outs):
                np.testing.assert_array_equal(out, slide.read_level_region(0, (x, y), (bw, bh)),
                                              err_msg=f"{kind} region {(x, y, bw, bh)}")
    finally:
        decoder.close()


@pytest.mark.parametrize("tile,stride,margin", [(512, 512, 0), (512, 256, 16), (300, 170, 40)])
def test_bands_through_it_equal_the_slide_decoders(make_slide, monkeypatch, tile, stride, margin):
    """Small chunks: many bands, rows carried between chunks, chunks that start inside a stored tile row."""
    from histofast.io import bands

    path = make_slide(2048, 2560, seed=22)
    monkeypatch.setattr(bands, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(nvimgcodec, "CHUNK_BYTES", 1 << 20)
    with histofast.open_slide(path) as slide:
        view = LevelView(slide, 0)
        rows = open_rows(view, "nvimgcodec-cpu")
        try:
            theirs = [(b.y0, b.rows, b.pixels.copy()) for b in read_bands(view, tile, stride, margin)]
            mine = [(b.y0, b.rows, b.pixels.copy()) for b in read_bands(view, tile, stride, margin, rows=rows)]
        finally:
            rows.close()
    assert len(mine) == len(theirs) > 2
    for (y0, r, a), (y1, s, b) in zip(mine, theirs):
        assert (y0, r) == (y1, s)
        np.testing.assert_array_equal(a, b)


def test_tile_grid_through_it_keeps_exactly_the_recipes_tiles(make_slide, openslide_level):
    import cv2

    path = make_slide(3072, 2048, seed=23, tissue_fraction=0.4)
    grid = histofast.tile_grid(path, 256, 128, decode="nvimgcodec-cpu")
    assert grid.decoder == "nvimgcodec-cpu"
    hsv = cv2.cvtColor(np.ascontiguousarray(openslide_level(path, 0)), cv2.COLOR_RGB2HSV)
    white = cv2.inRange(hsv, np.array((0, 0, 200), np.uint8), np.array((180, 30, 255), np.uint8)) > 0
    rows, cols = grid.shape
    expected = np.array([[white[i * 128:i * 128 + 256, j * 128:j * 128 + 256].mean() for j in range(cols)]
                         for i in range(rows)])
    np.testing.assert_array_equal(grid.keep, expected <= 0.5)
    np.testing.assert_allclose(grid.white_ratio, expected, atol=1e-6)
    cpu = histofast.tile_grid(path, 256, 128, decode="cpu")
    assert cpu.decoder == "tiff"
    np.testing.assert_array_equal(grid.white_ratio, cpu.white_ratio)


def test_iter_tiles_and_grid_tiles_through_it_equal_the_fast_path(make_slide):
    path = make_slide(2048, 2048, seed=24)
    augment = histofast.Augment(rot90=True, flip=True, max_shift=24, seed=5)
    options = dict(batch_size=7, augment=augment, epoch=2, out_dtype="float16", layout="NCHW")
    mine = histofast.iter_tiles(path, 256, 192, decode="nvimgcodec-cpu", **options)
    assert mine.decoder == "nvimgcodec-cpu"
    theirs = histofast.iter_tiles(path, 256, 192, decode="cpu", **options)
    count = 0
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.coords, b.coords)
        count += len(a)
    assert count == len(mine.grid) > 0
    again = list(mine.grid.tiles(decode="nvimgcodec-cpu", batch_size=64))
    np.testing.assert_array_equal(np.concatenate([b.images for b in again]),
                                  np.concatenate([b.images for b in mine.grid.tiles(decode="cpu", batch_size=64)]))


@pytest.mark.parametrize("mode", ["tiles", "images"])
def test_pipeline_through_it_gives_the_same_batches(make_slide, mode):
    torch = pytest.importorskip("torch")
    paths = [make_slide(1536, 1536, seed=25 + k) for k in range(2)]
    options = dict(backend="torch", batch_size=4, progress=False, mode=mode, image_size=512, workers=2)
    mine = histofast.Pipeline(paths, 256, 256, decode="nvimgcodec-cpu", **options)
    theirs = histofast.Pipeline(paths, 256, 256, decode="cpu", **options)
    batches = 0
    for a, b in zip(mine, theirs, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key
        batches += 1
    assert batches == len(mine) > 1


# ---------------------------------------------------------------- choosing the decoder, and bad input


def test_auto_on_the_cpu_is_the_fast_path_and_cpu_never_uses_nvimgcodec(make_slide):
    path = make_slide(1024, 1024, seed=26)
    assert histofast.tile_grid(path, 256).decoder == "tiff"
    slide, rows = _rows(path, "cpu")
    assert isinstance(rows, SlideRows)
    slide.close()


@pytest.mark.parametrize("decode,message", [
    ("nvjpeg", "decode='nvjpeg': expected one of 'auto', 'cpu', 'gpu', 'nvimgcodec-cpu'"),
    ("gpu", "decode='gpu' decodes into GPU memory: it needs device='cuda'"),
])
def test_bad_decode_arguments_are_refused_before_reading(make_slide, decode, message):
    path = make_slide(1024, 1024, seed=26)
    for call in (lambda: histofast.tile_grid(path, 256, decode=decode),
                 lambda: histofast.iter_tiles(path, 256, decode=decode),
                 lambda: histofast.Pipeline([path], 256, decode=decode, backend="torch", progress=False)):
        with pytest.raises(HistofastError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_files_it_does_not_read_are_named_and_auto_falls_back(tmp_path, make_slide):
    png = tmp_path / "plain.png"
    from PIL import Image

    Image.fromarray(synth.tissue_image(600, 600, seed=1)).save(png)
    with pytest.raises(SlideError, match=r"plain\.png.*decode='nvimgcodec-cpu': image slides are not tiled TIFFs"):
        histofast.tile_grid(png, 256, decode="nvimgcodec-cpu")
    path = make_slide(2048, 2048, seed=27)
    with pytest.raises(SlideError, match=r"decode='nvimgcodec-cpu': the grid resamples level 0"):
        histofast.tile_grid(path, 256, mpp=0.3, decode="nvimgcodec-cpu")
    with histofast.open_slide(path) as slide:  # the same view with decode="auto" on a CUDA device: the CPU
        rows = open_rows(LevelView(slide, 0, 1.2), "auto", "cuda")
        assert isinstance(rows, SlideRows)


def test_a_corrupt_tile_is_an_error_naming_slide_and_rows(tmp_path):
    path = synth.write_slide(tmp_path / "bad.svs", 1024, 1024, seed=28)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = b"\0" * count  # no JPEG markers at all: no decoder can make pixels of it
    broken = tmp_path / "broken.svs"
    broken.write_bytes(bytes(data))
    with histofast.open_slide(broken, backend="tiff") as slide:
        assert 0 in slide.direct_levels  # the check at open decodes another tile
        decoder = nvimgcodec.NvDecoder("cpu", 1)
        try:
            rows = nvimgcodec.NvRows(decoder, slide, 0, nvimgcodec.level_ifd(slide, 0)[0], owned=False)
            with pytest.raises(SlideError, match=r"broken\.svs.*nvimgcodec-cpu could not decode level 0 rows 0\.\.512"):
                rows.read(0, 512, rows.empty((512, 1024, 3))).wait()
        finally:
            decoder.close()


def test_missing_nvimgcodec_is_a_clear_error_or_a_quiet_fallback(make_slide, monkeypatch, caplog):
    monkeypatch.setattr(decode_module, "nvimgcodec_installed", lambda: False)
    path = make_slide(1024, 1024, seed=26)
    with pytest.raises(HistofastError, match=r"decode='nvimgcodec-cpu': nvImageCodec is not installed "
                                             r"\(pip install 'histofast\[gpu\]'\)"):
        histofast.tile_grid(path, 256, decode="nvimgcodec-cpu")
    decode_module._warned.clear()
    with caplog.at_level(logging.WARNING, "histofast"), histofast.open_slide(path) as slide:
        assert isinstance(open_rows(LevelView(slide, 0), "auto", "cuda"), SlideRows)
        assert isinstance(open_rows(LevelView(slide, 0), "auto", "cuda"), SlideRows)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["decoding on the CPU: nvImageCodec is not installed (pip install 'histofast[gpu]')"]


def test_nvimgcodecs_loader_noise_never_reaches_the_user(make_slide):
    """Without its GPU libraries nvImageCodec prints "Failed to load nvjpeg library!" on import; histofast
    keeps it (for error messages) and the terminal stays clean."""
    path = make_slide(1024, 1024, seed=26)
    code = (f"import histofast; g = histofast.tile_grid({str(path)!r}, 256, decode='nvimgcodec-cpu'); "
            "print(g.decoder)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "nvimgcodec-cpu"
    assert done.stderr == ""


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_gpu_decode_is_within_a_few_levels_and_keeps_nearly_the_same_tiles(make_slide):
    torch = pytest.importorskip("torch")
    path = make_slide(4096, 4096, seed=29)
    gpu = histofast.tile_grid(path, 512, 256, device="cuda", decode="gpu")
    assert gpu.decoder == "nvimgcodec-gpu"
    cpu = histofast.tile_grid(path, 512, 256, decode="cpu")
    assert (gpu.keep != cpu.keep).mean() < 0.01
    assert np.abs(gpu.white_ratio - cpu.white_ratio).max() < 0.05
    with histofast.open_slide(path) as slide:
        rows = open_rows(LevelView(slide, 0), "gpu", "cuda")
        out = rows.empty((1024, 4096, 3))
        rows.read(0, 1024, out).wait()
        rows.close()
        diff = np.abs(out.cpu().numpy().astype(np.int16) - slide.read_level_region(0, (0, 0), (4096, 1024)))
    assert isinstance(out, torch.Tensor) and out.is_cuda
    assert diff.mean() < 1.0 and diff.max() <= 32, (diff.mean(), diff.max())


@pytest.mark.gpu
def test_gpu_iter_tiles_and_pipeline_stay_on_the_device(make_slide):
    torch = pytest.importorskip("torch")
    path = make_slide(2048, 2048, seed=30)
    tiles = histofast.iter_tiles(path, 256, device="cuda", decode="gpu", out_dtype="float16", layout="NCHW")
    assert tiles.decoder == "nvimgcodec-gpu"
    batch = next(iter(tiles))
    assert batch.images.is_cuda and batch.images.dtype == torch.float16
    tiles.close()
    pipe = histofast.Pipeline([path], 256, backend="torch", device="cuda", decode="gpu", batch_size=8, progress=False)
    for b in pipe:
        assert b["image"].is_cuda
