"""The nvImageCodec reader: its CPU backend runs the GPU decode path's code (everything but the device
decode call) and must give the CPU fast path's pixels exactly, hence OpenSlide's; tile_grid, iter_tiles
and Pipeline through it give the same grids and batches; bad input gives clear errors. The GPU cases
(marked ``gpu``) measure nvJPEG against libjpeg-turbo: a few levels at most, keep decisions nearly all equal."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from types import SimpleNamespace

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
    options = dict(backend="torch", batch_size=4, progress=False, mode=mode, image_size=512, lanes=2)
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


# ---------------------------------------------------------------- threads, streams and CUDA majors (fakes)


def test_decoders_made_in_many_threads_at_once_keep_stderr_and_all_succeed():
    """The first import and each decoder's stderr capture, from 6 threads at once in a fresh process: every
    decoder is made (no half-imported module) and fd 2 is the terminal's again afterwards. Each redirection of
    fd 2 is slowed, so unserialised captures would overlap (they left fd 2 on a deleted temporary file)."""
    code = """if True:
        import json, os, sys, tempfile, threading, time
        from histofast.io import nvimgcodec
        before = os.fstat(2)
        real = os.dup2
        def slow(fd, fd2, *args):
            done = real(fd, fd2, *args)
            time.sleep(0.02)
            return done
        os.dup2 = slow
        errors, start = [], threading.Barrier(6)
        def work():
            start.wait()
            try:
                for _ in range(3):
                    nvimgcodec.NvDecoder("cpu", 1).close()
            except Exception as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads: t.start()
        for t in threads: t.join()
        after = os.fstat(2)
        print(json.dumps({"errors": errors, "same": [before.st_dev, before.st_ino] == [after.st_dev, after.st_ino]}))
        sys.stderr.write("stderr still reaches the terminal\\n")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"errors": [], "same": True}
    assert done.stderr == "stderr still reaches the terminal\n"


def test_a_cuda_major_other_than_pytorchs_is_refused_naming_both(monkeypatch):
    torch = pytest.importorskip("torch")
    assert nvimgcodec.cuda_major_mismatch(SimpleNamespace(__cuda_version__=13030), "13.0") == ""
    assert nvimgcodec.cuda_major_mismatch(SimpleNamespace(__cuda_version__=13030), None) == ""  # a CPU PyTorch
    message = nvimgcodec.cuda_major_mismatch(SimpleNamespace(__cuda_version__=12090), "13.0")
    assert "CUDA 12 (nvidia-nvimgcodec-cu12" in message and "PyTorch for CUDA 13" in message
    fake = _FakeNv(cuda_version=12090)
    monkeypatch.setattr(nvimgcodec, "_module", lambda: fake)
    monkeypatch.setattr(torch.version, "cuda", "13.0")

    def no_gpu(*args, **kwargs):
        raise AssertionError("the device was touched before the CUDA majors were checked")

    monkeypatch.setattr(torch.cuda, "Stream", no_gpu)
    monkeypatch.setattr(torch.cuda, "current_device", no_gpu)
    with pytest.raises(HistofastError, match=r"built for CUDA 12 .* PyTorch for CUDA 13 \(torch.version.cuda 13.0\)"):
        nvimgcodec.NvDecoder("cuda:0")


class _Log(list):
    """What the fakes did, in order (appends are atomic: the decoder's thread writes here too)."""


class _FakeStream:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name, self.cuda_stream = log, name, id(self)

    def wait_event(self, event):
        self.log.append(("wait", self.name, event))

    def record_event(self):
        self.log.append(("event", self.name))
        return f"event on {self.name}"

    def synchronize(self):
        self.log.append(("synchronize", self.name))


class _FakeBuffer:
    """A device buffer as PyTorch's caching allocator sees it: ``record_stream`` marks it used on a stream."""

    def __init__(self, log: _Log, k: int) -> None:
        self.log, self.k = log, k

    def data_ptr(self):
        return 1000 + self.k

    def record_stream(self, stream):
        self.log.append(("record_stream", self.k, stream.name))


class _FakeNv:
    """nvImageCodec's surface as NvDecoder uses it; ``decode`` queues nothing and says so in the log."""

    GPU_ONLY = HW_GPU_ONLY = HYBRID_CPU_GPU = CPU_ONLY = 0

    def __init__(self, cuda_version: int = 13030, outcome: str = "ok", log: _Log | None = None) -> None:
        self.__cuda_version__, self.outcome, self.log = cuda_version, outcome, log if log is not None else _Log()
        nv = self

        class Decoder:
            def __init__(self, **kwargs):
                pass

            def decode(self, sources, images, cuda_stream=None):
                nv.log.append(("decode", len(images)))
                if nv.outcome == "raises":
                    raise RuntimeError("nvTIFF failed")
                return [None if nv.outcome == "fails" and k == 0 else image for k, image in enumerate(images)]

        self.Decoder = Decoder

    def Backend(self, kind):
        return kind

    def Region(self, start, end):
        return (start, end)

    def CodeStream(self, path):
        return SimpleNamespace(get_sub_code_stream=lambda **kwargs: kwargs)

    def as_image(self, out, stream=None):
        return SimpleNamespace(__cuda_array_interface__={"data": (out.data_ptr(), False)})


def _fake_gpu_decoder(monkeypatch, outcome: str) -> tuple[nvimgcodec.NvDecoder, _Log]:
    """An NvDecoder on "cuda:1" whose nvImageCodec and CUDA calls are fakes that log what our code asks of them."""
    torch = pytest.importorskip("torch")
    log = _Log()
    monkeypatch.setattr(nvimgcodec, "_module", lambda: _FakeNv(outcome=outcome, log=log))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "Stream", lambda index: _FakeStream(log, f"decoder stream of cuda:{index}"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index: _FakeStream(log, f"current stream of cuda:{index}"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: log.append(("set_device", index,
                                                                            threading.current_thread().name)))
    return nvimgcodec.NvDecoder("cuda:1"), log


@pytest.mark.parametrize("outcome", ["ok", "fails", "raises"])
def test_every_buffer_a_gpu_decode_writes_is_recorded_on_its_stream_and_close_waits(monkeypatch, outcome):
    """nvImageCodec's decode() returns once its work is queued: until that work has run, the buffers must belong
    to the decode stream too (record_stream), whatever the outcome, before the decoder's thread lets go of them;
    close() waits for the decodes on the host and then on the device. (Ordering of our own code, CUDA faked.)"""
    decoder, log = _fake_gpu_decoder(monkeypatch, outcome)
    outs = [_FakeBuffer(log, k) for k in range(3)]
    pending = decoder.decode_into("slide.svs", 8, [(0, 0, 4, 4)] * 3, outs, "level 0 rows 0..4")
    if outcome == "ok":
        pending.wait()
    else:
        with pytest.raises((SlideError, RuntimeError)):
            pending.wait()
    decoder.close()
    steps = [entry for entry in log if entry[0] != "set_device"]
    decoded = steps.index(("decode", 3))
    assert steps[:decoded] == [("event", "current stream of cuda:1"),
                               ("wait", "decoder stream of cuda:1", "event on current stream of cuda:1")]
    assert steps[decoded + 1 : decoded + 4] == [("record_stream", k, "decoder stream of cuda:1") for k in range(3)]
    assert steps[-1] == ("synchronize", "decoder stream of cuda:1")  # close(): after the decode, on its stream
    threads = [entry for entry in log if entry[0] == "set_device"]
    assert threads and all(index == 1 and name.startswith("histofast-nvimgcodec") for _, index, name in threads)


def test_a_colour_transform_mixup_is_named(make_slide):
    """nvJPEG decoding an RGB-coded JPEG (Adobe marker, transform 0) as YCbCr, or a YCbCr one unconverted: the
    per-level check's error says exactly that. The wrong decodes here are libjpeg's own, told the wrong colour space."""
    import imagecodecs

    path = make_slide(1024, 1024, seed=31)  # RGB-coded JPEG tiles of 256: the check decodes tile 10 (x=y=512)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tif.filehandle.seek(page.dataoffsets[10])
        data = tif.filehandle.read(page.databytecounts[10])
    right = imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
    wrong = imagecodecs.jpeg8_decode(data, colorspace="YCbCr", outcolorspace="RGB")
    with histofast.open_slide(path) as slide:
        np.testing.assert_array_equal(right, slide.read_level_region(0, (512, 512), (256, 256)))
    assert nvimgcodec.colour_transform_mixup(right, right) == ""
    assert "decodes RGB-coded JPEG tiles (Adobe marker, colour transform 0) as YCbCr" in \
        nvimgcodec.colour_transform_mixup(wrong, right)
    ycc = imagecodecs.jpeg8_encode(right, 95, colorspace="RGB", outcolorspace="YCbCr")
    unconverted = imagecodecs.jpeg8_decode(ycc, colorspace="RGB", outcolorspace="RGB")
    converted = imagecodecs.jpeg8_decode(ycc, colorspace="YCbCr", outcolorspace="RGB")
    assert "leaves YCbCr JPEG tiles unconverted" in nvimgcodec.colour_transform_mixup(unconverted, converted)

    class WrongColours:  # a GPU decoder that decodes RGB-coded JPEG as YCbCr
        gpu, name = True, "nvimgcodec-gpu"

        def empty(self, shape):
            torch = pytest.importorskip("torch")
            return torch.empty(shape, dtype=torch.uint8)

        def decode_into(self, path, offset, boxes, outs, what):
            assert boxes == [(512, 512, 256, 256)]
            outs[0].numpy()[...] = wrong
            return SimpleNamespace(wait=lambda: None)

    with histofast.open_slide(path) as slide:
        offset, _ = nvimgcodec.level_ifd(slide, 0)
        with pytest.raises(SlideError, match=r"decodes level 0 differently .*: it decodes RGB-coded JPEG tiles "
                                             r"\(Adobe marker, colour transform 0\) as YCbCr"):
            nvimgcodec.check_level(WrongColours(), slide, 0, offset)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["svs-adobe-rgb", "jpeg-rgb", "jpeg-ycbcr-420"])
def test_gpu_decodes_both_jpeg_colour_transforms(generic_tiffs, make_slide, kind):
    """nvJPEG on RGB-coded JPEG (Aperio's and histofast.synth's: Adobe marker, transform 0) and on YCbCr JPEG
    (JFIF, 4:2:0): the per-level check passes (it names a colour-transform mix-up when it fails) and the pixels
    are within a few levels of libjpeg-turbo's."""
    pytest.importorskip("torch")
    path = make_slide(1024, 1024, seed=32) if kind == "svs-adobe-rgb" else generic_tiffs[kind]
    with histofast.open_slide(path) as slide:
        rows = open_rows(LevelView(slide, 0), "gpu", "cuda")
        try:
            w, h = slide.level_dimensions[0]
            out = rows.empty((h, w, 3))
            rows.read(0, h, out).wait()
            diff = np.abs(out.cpu().numpy().astype(np.int16) - slide.read_level_region(0, (0, 0), (w, h)))
        finally:
            rows.close()
    assert diff.mean() < 1.0 and diff.max() <= 32, (kind, diff.mean(), diff.max())


@pytest.mark.gpu
def test_gpu_buffers_survive_a_consumer_that_stops_early(make_slide, monkeypatch):
    """Many chunks in flight, the consumer stops after the first band and allocates at once: the decodes still
    running write only their own (recorded) buffers, so new tensors keep what was written into them."""
    torch = pytest.importorskip("torch")
    from histofast.io import bands

    monkeypatch.setattr(nvimgcodec, "CHUNK_BYTES", 1 << 20)
    path = make_slide(4096, 4096, seed=33)
    with histofast.open_slide(path) as slide:
        view = LevelView(slide, 0)
        for _ in range(3):
            rows = open_rows(view, "gpu", "cuda")
            next(iter(bands.read_bands(view, 512, 512, rows=rows, prefetch=4)))  # dropped: its generator closes
            fills = [torch.full((1 << 20,), k, dtype=torch.uint8, device="cuda") for k in range(1, 33)]
            rows.close()
            assert all(bool((f == k).all()) for k, f in zip(range(1, 33), fills))


def test_a_long_lived_decoder_keeps_only_the_last_files_parsed(generic_tiffs, monkeypatch):
    monkeypatch.setattr(nvimgcodec, "OPEN_FILES", 2)
    decoder = nvimgcodec.NvDecoder("cpu", 1)
    try:
        paths = [str(generic_tiffs[k]) for k in ("lzw", "deflate", "none", "lzw")]
        streams = [decoder.code_stream(p) for p in paths]
        assert list(decoder._streams) == [paths[2], paths[3]]
        assert streams[3] is not streams[0]  # parsed again after it was dropped
        assert decoder.code_stream(paths[2]) is streams[2]
    finally:
        decoder.close()
