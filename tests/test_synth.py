"""histofast.synth: Aperio slides that OpenSlide reads back as generated, and separable region datasets."""
from __future__ import annotations

import csv
import re

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile

from histofast import ops, synth
from histofast.errors import HistofastError

JPEG_MEAN_ABS = 4.0  # mean |OpenSlide − generated| allowed at quality 90; swapped or YCbCr-mangled colours give > 30


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """2048×1536 with min_level_size 256: levels 2048×1536 and 512×384 (a third, 128×96, is too small)."""
    path = tmp_path_factory.mktemp("slide") / "synth.svs"
    return synth.write_slide(path, 2048, 1536, seed=7, tissue_fraction=0.5, min_level_size=256, mpp=0.5,
                             magnification=20)


def rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_openslide_reads_aperio(slide):
    with openslide.OpenSlide(slide) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert s.level_count == 2
        assert s.level_dimensions == ((2048, 1536), (512, 384))
        assert s.level_downsamples == pytest.approx((1.0, 4.0))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert s.properties["openslide.objective-power"] == "20"
        assert list(s.associated_images) == ["thumbnail"]
        assert s.associated_images["thumbnail"].size == (512, 384)


def test_tiff_layout(slide):
    with tifffile.TiffFile(slide) as tif:
        pages = list(tif.pages)
        assert [p.is_tiled for p in pages] == [True, False, True]
        for page in pages:
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.photometric == tifffile.PHOTOMETRIC.RGB
            assert page.description.startswith("Aperio Image Library")
        assert pages[0].tile == (256, 256)
        assert "|AppMag = 20|MPP = 0.5" in pages[0].description
        assert "-> 512x384" in pages[2].description


def test_level0_matches_generated_pixels(slide):
    expected = synth.tissue_image(1536, 2048, seed=7, tissue_fraction=0.5)
    with openslide.OpenSlide(slide) as s:
        region = rgb(s.read_region((300, 200), 0, (700, 600)))
    assert mean_abs(region, expected[200:800, 300:1000]) < JPEG_MEAN_ABS


def test_lower_level_and_thumbnail_are_area_means(slide):
    expected = synth._block_mean(synth.tissue_image(1536, 2048, seed=7), 4)
    with openslide.OpenSlide(slide) as s:
        assert mean_abs(rgb(s.read_region((0, 0), 1, (512, 384))), expected) < JPEG_MEAN_ABS
        assert mean_abs(rgb(s.associated_images["thumbnail"]), expected) < JPEG_MEAN_ABS


def test_stored_tiles_decode_like_openslide(slide):
    # A direct decoder must see the same pixels as OpenSlide: each tile is a whole RGB JPEG, no shared tables.
    with tifffile.TiffFile(slide) as tif, openslide.OpenSlide(slide) as s:
        page = tif.pages[0]
        assert page.jpegtables is None
        index = 1 * 8 + 3  # tile row 1, column 3 of 8
        tif.filehandle.seek(page.dataoffsets[index])
        tile = imagecodecs.jpeg8_decode(tif.filehandle.read(page.databytecounts[index]))
        np.testing.assert_array_equal(tile, rgb(s.read_region((3 * 256, 256), 0, (256, 256))))


def test_edges_and_odd_sizes(tmp_path):
    path = synth.write_slide(tmp_path / "odd.svs", 1000, 700, seed=2, min_level_size=100)
    expected = synth.tissue_image(700, 1000, seed=2)
    with openslide.OpenSlide(path) as s:
        assert s.level_dimensions == ((1000, 700), (250, 175))
        assert mean_abs(rgb(s.read_region((744, 444), 0, (256, 256))), expected[444:, 744:]) < JPEG_MEAN_ABS


def test_same_seed_same_file_other_seed_other_pixels(tmp_path):
    a = synth.write_slide(tmp_path / "a.svs", 700, 500, seed=3, min_level_size=64)
    b = synth.write_slide(tmp_path / "b.svs", 700, 500, seed=3, min_level_size=64, threads=1)
    c = synth.write_slide(tmp_path / "c.svs", 700, 500, seed=4, min_level_size=64)
    assert a.read_bytes() == b.read_bytes()
    with openslide.OpenSlide(a) as sa, openslide.OpenSlide(c) as sc:
        whole = (0, 0), 0, (700, 500)
        assert rgb(sa.read_region(*whole)).tobytes() != rgb(sc.read_region(*whole)).tobytes()


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.6, 1.0])
def test_tissue_fraction(tmp_path, fraction):
    path = synth.write_slide(tmp_path / "f.svs", 1024, 768, seed=5, tissue_fraction=fraction, min_level_size=1024)
    with openslide.OpenSlide(path) as s:
        region = np.ascontiguousarray(rgb(s.read_region((0, 0), 0, (1024, 768))))
    tissue = 1 - float(ops.white_ratio(region, 1, 1).mean())  # per-pixel OpenCV HSV white test
    assert tissue == pytest.approx(fraction, abs=0.05)


def test_default_pyramid_for_large_slides():
    assert synth._level_sizes(16384, 16384, 1024) == [(16384, 16384), (4096, 4096), (1024, 1024)]
    assert synth._level_sizes(2048, 1536, 1024) == [(2048, 1536)]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(width=0), "width=0: must be a positive integer"),
        (dict(height=-5), "height=-5"),
        (dict(width=2.5), "width=2.5"),
        (dict(tissue_fraction=1.5), "tissue_fraction=1.5"),
        (dict(tile_size=100), "tile_size=100: must be a positive multiple of 16"),
        (dict(tile_size=0), "tile_size=0"),
        (dict(quality=0), "quality=0"),
        (dict(quality=101), "quality=101"),
        (dict(mpp=0), "mpp=0"),
        (dict(mpp=-0.25), "mpp=-0.25"),
        (dict(magnification=0), "magnification=0"),
        (dict(min_level_size=0), "min_level_size=0"),
        (dict(threads=0), "threads=0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, fragment):
    args = dict(width=512, height=512) | kwargs
    with pytest.raises(HistofastError, match=re.escape(fragment)):
        synth.write_slide(tmp_path / "bad.svs", **args)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(tile, quality):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")
        return imagecodecs.jpeg8_encode(tile, quality, colorspace="RGB", outcolorspace="RGB")

    monkeypatch.setattr(synth, "_encode", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synth.write_slide(tmp_path / "x.svs", 2048, 1024, tissue_fraction=1.0, threads=2)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_untouched_on_failure(tmp_path):
    path = tmp_path / "keep.svs"
    path.write_bytes(b"old")
    with pytest.raises(HistofastError):
        synth.write_slide(path, 512, 512, quality=0)
    with pytest.raises(FileNotFoundError):
        synth.write_slide(tmp_path / "missing" / "x.svs", 512, 512)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.svs"]


def test_tissue_image_contract():
    image = synth.tissue_image(300, 200, seed=1)
    assert image.shape == (300, 200, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, synth.tissue_image(300, 200, seed=1))
    assert synth.tissue_image(1, 1).shape == (1, 1, 3)
    with pytest.raises(HistofastError, match="tissue_fraction"):
        synth.tissue_image(10, 10, tissue_fraction=-0.1)


# --- region datasets ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.write_region_dataset(tmp_path_factory.mktemp("regions"), n_per_class=16, size=320, seed=11)


def manifest(root) -> list[dict]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def features(image: np.ndarray) -> tuple[float, float, int]:
    """(share of nucleus-coloured pixels, share of HSV-white pixels, pixels in the largest separate nucleus)."""
    import cv2

    nuclei = ((image[..., 0] < 160) & (image[..., 2] > image[..., 0])).astype(np.uint8)
    white = float(ops.white_ratio(np.ascontiguousarray(image), 1, 1).mean())
    count, _, stats, _ = cv2.connectedComponentsWithStats(nuclei, connectivity=4)
    return float(nuclei.mean()), white, int(stats[1:, cv2.CC_STAT_AREA].max(initial=0))


def classify(image: np.ndarray) -> str:
    """A hand-written rule on simple statistics: if it works, a small CNN has an easy job."""
    nuclei, white, largest = features(image)
    if white > 0.03:
        return "ADC"  # gland lumens
    if nuclei > 0.4:
        return "SCLC"  # crowded nuclei
    return "SC" if largest >= 120 else "NORM"  # large nuclei in nests vs sparse small ones


def test_region_dataset_layout(dataset):
    rows = manifest(dataset)
    assert list(rows[0]) == ["path", "label", "patient"]
    assert len(rows) == 64
    assert sorted(p.name for p in dataset.iterdir()) == ["ADC", "NORM", "SC", "SCLC", "manifest.csv"]
    for row in rows:
        assert row["path"].startswith(row["label"] + "/")
        image = imagecodecs.png_decode((dataset / row["path"]).read_bytes())
        assert image.shape == (320, 320, 3) and image.dtype == np.uint8
    assert not list(dataset.rglob("*.tmp"))


def test_region_patients_are_disjoint_across_classes(dataset):
    rows = manifest(dataset)
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row["patient"], set()).add(row["label"])
    assert all(len(labels) == 1 for labels in by_patient.values())
    per_class = {label: {r["patient"] for r in rows if r["label"] == label} for label in ("NORM", "SC")}
    assert len(per_class["NORM"]) == 4  # default: n_per_class // 4 patients, 4 images each
    counts = [sum(r["patient"] == p for r in rows) for p in by_patient]
    assert min(counts) >= 2


def test_region_classes_separate_on_simple_statistics(dataset):
    rows = manifest(dataset)
    predicted = [classify(imagecodecs.png_decode((dataset / r["path"]).read_bytes())) for r in rows]
    accuracy = np.mean([p == r["label"] for p, r in zip(predicted, rows)])
    assert accuracy >= 0.95


def test_region_classes_separate_on_small_crops():
    for label in ("NORM", "SCLC", "SC", "ADC"):
        image = synth.region_image(label, 640, seed=3)
        crops = [image[y:y + 160, x:x + 160] for y in (0, 240, 480) for x in (0, 240, 480)]
        assert np.mean([classify(c) == label for c in crops]) >= 0.75, label


def test_region_dataset_deterministic_and_jpeg(tmp_path):
    a = synth.write_region_dataset(tmp_path / "a", classes=("ADC", "SC"), n_per_class=3, size=96, seed=1)
    b = synth.write_region_dataset(tmp_path / "b", classes=("ADC", "SC"), n_per_class=3, size=96, seed=1)
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    for row in manifest(a):
        assert (a / row["path"]).read_bytes() == (b / row["path"]).read_bytes()
    c = synth.write_region_dataset(tmp_path / "c", classes=("NORM",), n_per_class=2, size=64, fmt="jpg",
                                   patients_per_class=2)
    rows = manifest(c)
    assert [r["path"] for r in rows] == ["NORM/NORM_000.jpg", "NORM/NORM_001.jpg"]
    assert len({r["patient"] for r in rows}) == 2
    assert imagecodecs.jpeg8_decode((c / rows[0]["path"]).read_bytes()).shape == (64, 64, 3)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(classes=("NORM", "XYZ")), "classes="),
        (dict(classes=("SC", "SC")), "classes="),
        (dict(classes=()), "classes="),
        (dict(n_per_class=0), "n_per_class=0"),
        (dict(size=0), "size=0"),
        (dict(patients_per_class=5, n_per_class=4), "patients_per_class=5"),
        (dict(fmt="bmp"), "fmt='bmp'"),
    ],
)
def test_region_dataset_bad_arguments(tmp_path, kwargs, fragment):
    with pytest.raises(HistofastError, match=re.escape(fragment)):
        synth.write_region_dataset(tmp_path / "d", **(dict(size=32) | kwargs))
    assert not (tmp_path / "d").exists()


def test_stain_pales_the_tissue_towards_the_background():
    """stain=1 is the usual image; weaker stain moves tissue colours towards the background (a faint section),
    0 leaves tissue as white as the glass around it."""
    import cv2

    full = synth.tissue_image(256, 256, seed=4, tissue_fraction=0.6)
    np.testing.assert_array_equal(synth.tissue_image(256, 256, seed=4, tissue_fraction=0.6, stain=1.0), full)
    white = [(cv2.inRange(cv2.cvtColor(synth.tissue_image(256, 256, 4, 0.6, stain=s), cv2.COLOR_RGB2HSV),
                          (0, 0, 200), (180, 30, 255)) > 0).mean() for s in (1.0, 0.4, 0.2, 0.0)]
    assert white == sorted(white) and white[0] < 0.6 and white[-1] == 1.0
    with pytest.raises(HistofastError, match="stain=1.5"):
        synth.tissue_image(8, 8, stain=1.5)
