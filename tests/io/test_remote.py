"""Remote slides (histofast.io.remote) against real servers started here on 127.0.0.1: nginx over HTTP, moto's S3
server, and a fault-injecting proxy in front of either. A remote slide must read exactly what the same file reads
locally (metadata as OpenSlide gives it, every level's pixels), fetch only byte ranges, retry what a retry can mend,
and otherwise fail naming the URL and the byte range: never a wrong or partial pixel."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from servers import FaultProxy, presigned_url, put_object, s3_env, serve_nginx, serve_s3

import histofast
from histofast import SlideError, synth, synth_dicom
from histofast.io import DicomSlide, TiffSlide, open_slide, remote

SIZE = (3000, 2200)  # three levels of 256² JPEG tiles, partial edge tiles
SLIDE = dict(seed=5, tissue_fraction=0.5, mpp=0.25, min_level_size=90)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The files both servers serve: an SVS, the same slide as DICOM series (plain, sparse with a missing frame,
    with a corrupt frame), a generic tiled TIFF, and files no remote reader takes."""
    root = tmp_path_factory.mktemp("www")
    synth.write_slide(root / "slide.svs", *SIZE, **SLIDE)
    synth_dicom.write_dicom_slide(root / "dicom", *SIZE, **SLIDE)
    synth_dicom.write_dicom_slide(root / "sparse", *SIZE, **SLIDE, sparse=True, frames_per_instance=7,
                                  missing=((0, 2, 1),))
    synth_dicom.write_dicom_slide(root / "corrupt", *SIZE, **SLIDE, corrupt=((0, 3, 2),))
    image = synth.tissue_image(1100, 900, seed=2)
    with tifffile.TiffWriter(root / "generic.tif") as tif:
        for i, level in enumerate([image, np.ascontiguousarray(image[::4, ::4])]):
            tif.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None,
                      subfiletype=1 if i else 0, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    tifffile.imwrite(root / "rgba.tif", np.dstack([image, np.full(image.shape[:2], 200, np.uint8)]),
                     tile=(256, 256), photometric="rgb", metadata=None)
    tifffile.imwrite(root / "stripped.tif", image, photometric="rgb", metadata=None)
    (root / "notes.txt").write_text("not a slide")
    return root


@pytest.fixture(scope="module")
def http(root):
    with serve_nginx(root) as url:
        yield url


@pytest.fixture(scope="module")
def s3(root):
    with serve_s3() as endpoint:
        for path in root.rglob("*"):
            if path.is_file():
                put_object(endpoint, "slides", path.relative_to(root).as_posix(), path)
        yield endpoint


@pytest.fixture
def s3_environment(s3, monkeypatch):
    """Credentials and endpoint where botocore looks for them: nothing passed to histofast."""
    for key, value in s3_env(s3).items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF", 0.01)
    monkeypatch.setattr(remote, "TIMEOUT", 2.0)


def same_slide(theirs, local, rng, regions=4):
    """``theirs`` reads what ``local`` reads: levels, downsamples, µm per pixel, magnification, tile shapes, and
    whole levels and random regions (reaching past the edges) of every level."""
    assert theirs.level_dimensions == local.level_dimensions
    assert theirs.level_downsamples == pytest.approx(local.level_downsamples, rel=1e-12)
    assert theirs.mpp == pytest.approx(local.mpp) and theirs.objective_power == local.objective_power
    for level, (w, h) in enumerate(local.level_dimensions):
        assert theirs.tile_shape(level) == local.tile_shape(level)
        np.testing.assert_array_equal(theirs.read_level_region(level, (0, 0), (w, h)),
                                      local.read_level_region(level, (0, 0), (w, h)))
        for _ in range(regions):
            x, y = int(rng.integers(-50, w)), int(rng.integers(-50, h))
            size = (int(rng.integers(1, 700)), int(rng.integers(1, 500)))
            np.testing.assert_array_equal(theirs.read_level_region(level, (x, y), size),
                                          local.read_level_region(level, (x, y), size))


# ---------------------------------------------------------------------------------------------------- reading

def test_svs_over_http_reads_as_the_local_file_and_as_openslide_says(root, http):
    import openslide

    with open_slide(f"{http}/slide.svs") as theirs, open_slide(root / "slide.svs") as local:
        assert isinstance(theirs, TiffSlide) and theirs.remote
        assert theirs.direct_levels == (0, 1, 2) == tuple(range(theirs.level_count))
        assert theirs.path == f"{http}/slide.svs" and theirs.path.name == "slide.svs"
        same_slide(theirs, local, np.random.default_rng(0))
        with openslide.OpenSlide(root / "slide.svs") as osr:  # the metadata OpenSlide would give
            for key, value in theirs.properties.items():
                assert osr.properties[key] == value, key
            assert theirs.level_downsamples == osr.level_downsamples
        # Only ranges: each level read whole once more costs about its bytes, in few requests.
        before = theirs._read.requests, theirs._read.bytes
        theirs.read_level_region(0, (0, 0), SIZE)
        tiles = len(theirs.stored_page(0).dataoffsets)
        requests, fetched = theirs._read.requests - before[0], theirs._read.bytes - before[1]
        assert requests <= tiles // 4 and fetched <= 1.01 * sum(theirs.stored_page(0).databytecounts)


def test_generic_tiff_over_http_levels_and_resolution_as_openslide(root, http):
    import openslide

    with open_slide(f"{http}/generic.tif") as theirs, openslide.OpenSlide(root / "generic.tif") as osr:
        assert theirs.level_dimensions == osr.level_dimensions and theirs.level_downsamples == osr.level_downsamples
        assert float(theirs.properties["openslide.mpp-x"]) == pytest.approx(float(osr.properties["openslide.mpp-x"]))
        with open_slide(root / "generic.tif") as local:
            same_slide(theirs, local, np.random.default_rng(1), regions=1)


@pytest.mark.parametrize("name", ["dicom", "sparse"])
def test_dicom_series_over_http_as_a_folder_an_instance_or_a_list(root, http, name):
    local = open_slide(root / name)
    instances = sorted(p.name for p in (root / name).iterdir())
    try:
        for path in (f"{http}/{name}/", f"{http}/{name}/{instances[0]}", [f"{http}/{name}/{i}" for i in instances]):
            with open_slide(path) as theirs:
                assert isinstance(theirs, DicomSlide) and theirs.direct_levels == tuple(range(theirs.level_count))
                assert theirs.properties["openslide.vendor"] == "dicom"
                for key in ("openslide.mpp-x", "openslide.mpp-y", "openslide.objective-power"):
                    assert float(theirs.properties[key]) == pytest.approx(float(local.properties[key]))
                same_slide(theirs, local, np.random.default_rng(len(path)), regions=2)
    finally:
        local.close()


def test_svs_and_dicom_over_s3_with_credentials_from_the_environment(root, s3_environment):
    rng = np.random.default_rng(2)
    with open_slide("s3://slides/slide.svs") as theirs, open_slide(root / "slide.svs") as local:
        assert theirs._read.etag and theirs.remote
        same_slide(theirs, local, rng)
    with open_slide("s3://slides/sparse/") as theirs, open_slide(root / "sparse") as local:
        same_slide(theirs, local, rng, regions=2)


def test_tile_grid_and_iter_tiles_take_urls(root, http, s3_environment):
    expected = histofast.tile_grid(root / "slide.svs", tile_size=224, stride=200)
    for url in (f"{http}/slide.svs", "s3://slides/slide.svs", f"{http}/dicom/"):
        grid = histofast.tile_grid(url, tile_size=224, stride=200)
        np.testing.assert_array_equal(grid.white_ratio, expected.white_ratio)
        assert grid.slide_path == url
        batches = list(histofast.iter_tiles(url, tile_size=224, stride=200, batch_size=32))
        local = list(histofast.iter_tiles(root / "slide.svs", tile_size=224, stride=200, batch_size=32))
        assert len(batches) == len(local)
        for a, b in zip(batches, local):
            np.testing.assert_array_equal(a.images, b.images)


def test_missing_and_corrupt_frames_over_http(root, http):
    with open_slide(f"{http}/sparse/") as s:
        assert (s.read_level_region(0, (2 * 256, 256), (256, 256)) == 255).all()  # no frame: white
    with open_slide(f"{http}/corrupt/") as s, pytest.raises(SlideError, match=r"corrupt tile: level 0 tile .*frame"):
        s.read_level_region(0, (0, 0), SIZE)


# ----------------------------------------------------------------------------------------------------- faults

@pytest.fixture
def proxied(http):
    with FaultProxy(http) as proxy:
        yield proxy


@pytest.mark.parametrize("fault", ["drop", "truncate", "fail", "delay"])
def test_a_fault_is_retried_and_the_pixels_are_right(root, proxied, fault):
    with open_slide(f"{proxied.url}/slide.svs", threads=2) as theirs, open_slide(root / "slide.svs") as local:
        arm = {"drop": lambda: proxied.drop(times=3), "truncate": lambda: proxied.truncate(times=3),
               "fail": lambda: proxied.fail(503, times=3), "delay": lambda: proxied.delay(3.0, times=1)}[fault]
        arm()
        np.testing.assert_array_equal(theirs.read_level_region(0, (0, 0), SIZE),
                                      local.read_level_region(0, (0, 0), SIZE))
        assert proxied.faults >= 1 and theirs._read.retries >= 1


@pytest.mark.parametrize("fault", ["drop", "truncate", "fail"])
def test_a_fault_that_persists_names_the_url_and_the_byte_range(proxied, fault):
    with open_slide(f"{proxied.url}/slide.svs", threads=2) as theirs:
        {"drop": proxied.drop, "truncate": proxied.truncate, "fail": proxied.fail}[fault](times=10_000)
        with pytest.raises(SlideError, match=rf"{proxied.url}/slide.svs: bytes \d+\.\.\d+: failed 5 times"):
            theirs.read_level_region(0, (0, 0), SIZE)


def test_tiles_fetched_ahead_over_a_slow_link_read_right(root, proxied):
    """Every request 50 ms late: the jobs' tiles are fetched ahead (tiles.FETCH_AHEAD groups in flight), and a grid
    and a level read equal the local file's."""
    with open_slide(f"{proxied.url}/slide.svs", threads=2) as theirs, open_slide(root / "slide.svs") as local:
        proxied.delay(0.05, times=10_000)
        np.testing.assert_array_equal(histofast.tile_grid(theirs, tile_size=256).white_ratio,
                                      histofast.tile_grid(local, tile_size=256).white_ratio)
        np.testing.assert_array_equal(theirs.read_level_region(1, (0, 0), theirs.level_dimensions[1]),
                                      local.read_level_region(1, (0, 0), local.level_dimensions[1]))
        assert theirs._read.retries == 0


def test_a_server_that_is_down(proxied):
    with open_slide(f"{proxied.url}/slide.svs") as theirs:
        proxied.down()
        with pytest.raises(SlideError, match=r"bytes \d+\.\.\d+: failed 5 times"):
            theirs.read_level_region(1, (0, 0), (256, 256))
        proxied.up()
        assert theirs.read_level_region(1, (0, 0), (256, 256)).shape == (256, 256, 3)
    proxied.down()
    with pytest.raises(SlideError, match="its size: failed 5 times"):
        open_slide(f"{proxied.url}/slide.svs")


def test_a_changed_object_is_detected_over_http_and_s3(root, http, s3_environment, tmp_path):
    shutil.copy(root / "slide.svs", root / "changing.svs")
    put_object(s3_environment, "slides", "changing.svs", root / "slide.svs")
    try:
        for url in (f"{http}/changing.svs", "s3://slides/changing.svs"):
            with open_slide(url) as s:
                s.read_level_region(2, (0, 0), (64, 64))
                if url.startswith("s3"):
                    put_object(s3_environment, "slides", "changing.svs", root / "generic.tif")
                else:
                    shutil.copy(root / "generic.tif", tmp_path / "new")
                    (tmp_path / "new").replace(root / "changing.svs")
                with pytest.raises(SlideError, match=r"bytes \d+\.\.\d+: the object changed since it was opened"):
                    s.read_level_region(0, (0, 0), (1024, 1024))
    finally:
        (root / "changing.svs").unlink()


# ------------------------------------------------------------------------------------------------- bad input

def test_what_only_openslide_reads_is_refused_remotely_saying_so(http):
    with pytest.raises(SlideError, match=r"level 0 .* only OpenSlide reads .* local files only"):
        open_slide(f"{http}/rgba.tif")
    with pytest.raises(SlideError, match="not a tiled TIFF"):
        open_slide(f"{http}/stripped.tif")
    with pytest.raises(SlideError, match="neither a tiled TIFF nor a DICOM WSI"):
        open_slide(f"{http}/notes.txt")
    with pytest.raises(SlideError, match="OpenSlide reads local files only"):
        open_slide(f"{http}/slide.svs", backend="openslide")
    with pytest.raises(SlideError, match=r"missing\.svs: its size: no such object"):
        open_slide(f"{http}/missing.svs")


def test_a_server_that_ignores_ranges_is_named(root):
    """Python's http.server answers every GET with the whole file: a range read must say so, not retry or decode."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with pytest.raises(SlideError, match=r"bytes 0\.\.132: the server sent \d+ bytes: it ignores byte ranges"):
                open_slide(f"http://127.0.0.1:{server.server_address[1]}/slide.svs")
        finally:
            server.shutdown()


def test_credentials_never_ride_in_urls_or_messages(s3, http):
    with pytest.raises(SlideError, match="must not carry credentials") as e:
        open_slide("https://user:secret@127.0.0.1/slide.svs")
    assert "secret" not in str(e.value)
    signed = presigned_url(s3, "slides", "nothing-here.svs")
    assert "Signature=" in signed
    with pytest.raises(SlideError) as e:
        open_slide(signed)
    assert "Signature=…" in str(e.value) and signed.split("Signature=")[1][:8] not in str(e.value)
    signed = presigned_url(s3, "slides", "slide.svs")  # a presigned URL is read over plain HTTP
    with open_slide(signed) as s:
        assert s.level_count >= 3 and s.path.name == "slide.svs"
