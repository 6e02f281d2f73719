"""histofast.synth_dicom: DICOM WSI series that OpenSlide (4.x, libdicom) reads as the SVS of the same arguments,
bit for bit: one instance per level, concatenations, TILED_SPARSE frames in shuffled order, missing frames
(transparent) and corrupt frames (OpenSlide refuses them)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from pydicom.encaps import generate_frames

from histofast import synth, synth_dicom
from histofast.errors import HistofastError
from histofast.export.inputs import find_slides

SIZE = (2000, 1500)  # edge tiles partial at every level: 8×6, 2×2 and 1×1 tiles of 256
SLIDE = dict(seed=3, tissue_fraction=0.5, tile_size=256, quality=90, mpp=0.25, min_level_size=90)
LEVELS = ((2000, 1500), (500, 375), (125, 93))
MISSING = ((0, 1, 1), (0, 7, 5), (1, 1, 0))  # (level, tile_x, tile_y); (0, 7, 5) is level 0's partial corner tile
VARIANTS = {
    "single": {},
    "concatenated": dict(frames_per_instance=3),  # level 0: 16 members, level 1: 2, level 2: one file
    "sparse": dict(sparse=True),
    "sparse-concatenated": dict(sparse=True, frames_per_instance=5),
    "sparse-missing": dict(sparse=True, missing=MISSING),
}


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    return synth.write_slide(tmp_path_factory.mktemp("svs") / "slide.svs", *SIZE, **SLIDE)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[str, Path]:
    """Variant name -> the level-0 file write_dicom_slide returned (each series in a folder of its own)."""
    root = tmp_path_factory.mktemp("dicom")
    return {name: synth_dicom.write_dicom_slide(root / name, *SIZE, **SLIDE, **options)
            for name, options in VARIANTS.items()}


def files(first: Path) -> list[Path]:
    return sorted(first.parent.glob("*.dcm"))


def regions(level: int, dims: tuple[int, int], downsample: float) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(level-0 location, level size) of reads on `level`: the whole level, pieces across tile borders, a piece
    over the right and bottom edges (outside the level: transparent in both)."""
    w, h = dims
    pieces = [(0, 0, w, h), (w // 3, h // 5, min(300, w - w // 3), min(270, h - h // 5)),
              (max(0, w - 70), max(0, h - 50), 100, 90), (17, 5, min(w, 513) - 17, min(h, 258) - 5)]
    return [((int(x * downsample), int(y * downsample)), (pw, ph)) for x, y, pw, ph in pieces]


def read(path: Path, location, level, size) -> np.ndarray:
    with openslide.OpenSlide(os.fspath(path)) as osr:
        return np.asarray(osr.read_region(location, level, size))


# ---------------------------------------------------------------------------------------- OpenSlide reads it

@pytest.mark.parametrize("name", list(VARIANTS))
def test_openslide_opens_every_variant_from_any_file_with_the_svs_geometry(series, svs, name):
    with openslide.OpenSlide(os.fspath(svs)) as ref:
        assert ref.level_dimensions == LEVELS
        for path in {files(series[name])[0], files(series[name])[-1], series[name]}:
            with openslide.OpenSlide(os.fspath(path)) as osr:
                assert openslide.OpenSlide.detect_format(os.fspath(path)) == "dicom"
                assert osr.level_count == ref.level_count == 3
                assert osr.level_dimensions == ref.level_dimensions
                assert osr.level_downsamples == ref.level_downsamples
                for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y,
                            openslide.PROPERTY_NAME_OBJECTIVE_POWER):
                    assert float(osr.properties[key]) == float(ref.properties[key]), key
                assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.25


@pytest.mark.parametrize("name", ["single", "concatenated", "sparse", "sparse-concatenated"])
def test_read_region_equals_the_svs_bit_for_bit_on_every_level(series, svs, name):
    with openslide.OpenSlide(os.fspath(svs)) as ref, openslide.OpenSlide(os.fspath(series[name])) as osr:
        for level in range(ref.level_count):
            for location, size in regions(level, ref.level_dimensions[level], ref.level_downsamples[level]):
                expected = np.asarray(ref.read_region(location, level, size))
                assert np.array_equal(np.asarray(osr.read_region(location, level, size)), expected), \
                    (name, level, location, size)


def test_missing_frames_read_transparent_the_rest_as_the_svs(series, svs):
    """OpenSlide paints nothing where a TILED_SPARSE level has no frame: RGBA (0, 0, 0, 0) over the tile (clipped
    to the level), everything else the SVS's pixels."""
    path, t = series["sparse-missing"], SLIDE["tile_size"]
    with openslide.OpenSlide(os.fspath(svs)) as ref, openslide.OpenSlide(os.fspath(path)) as osr:
        for level in range(ref.level_count):
            w, h = ref.level_dimensions[level]
            got = np.asarray(osr.read_region((0, 0), level, (w, h)))
            expected = np.array(ref.read_region((0, 0), level, (w, h)))
            holes = [(tx, ty) for lv, tx, ty in MISSING if lv == level]
            for tx, ty in holes:
                expected[ty * t:(ty + 1) * t, tx * t:(tx + 1) * t] = 0
            assert np.array_equal(got, expected), level
            assert (got[..., 3] == 0).sum() == sum(min(t, w - tx * t) * min(t, h - ty * t) for tx, ty in holes)
            if not holes:
                continue
            downsample = int(ref.level_downsamples[level])  # 1 and 4: level pixels = level-0 location / downsample
            for location, size in regions(level, (w, h), downsample):
                piece = np.array(ref.read_region(location, level, size))
                x, y = location[0] // downsample, location[1] // downsample
                for tx, ty in holes:
                    piece[max(0, ty * t - y):max(0, (ty + 1) * t - y), max(0, tx * t - x):max(0, (tx + 1) * t - x)] = 0
                assert np.array_equal(np.asarray(osr.read_region(location, level, size)), piece), (level, location)


def test_a_corrupt_frame_fails_in_openslide_and_only_there(tmp_path, svs):
    path = synth_dicom.write_dicom_slide(tmp_path / "bad", *SIZE, **SLIDE, corrupt=[(0, 2, 1)])
    with openslide.OpenSlide(os.fspath(svs)) as ref:
        good = np.asarray(ref.read_region((0, 0), 0, (512, 256)))
    assert np.array_equal(read(path, (0, 0), 0, (512, 256)), good)  # tiles (0, 0), (1, 0)
    with pytest.raises(openslide.OpenSlideError, match="Premature end of JPEG file"):
        read(path, (512, 256), 0, (256, 256))
    with openslide.OpenSlide(os.fspath(path)) as osr:  # the other levels are whole
        assert np.array_equal(np.asarray(osr.read_region((0, 0), 1, LEVELS[1])),
                              read(svs, (0, 0), 1, LEVELS[1]))


# ---------------------------------------------------------------------------------------------- the files

def svs_tiles(svs: Path) -> list[list[bytes]]:
    """Level -> its stored JPEG tiles, row-major, read independently of synth_dicom."""
    out = []
    with tifffile.TiffFile(svs) as tif, open(svs, "rb") as fh:
        for page in tif.pages:
            if page.is_tiled:
                tiles = []
                for offset, count in zip(page.dataoffsets, page.databytecounts):
                    fh.seek(offset)
                    tiles.append(fh.read(count))
                out.append(tiles)
    return out


def positions(ds, tile: int) -> list[tuple[int, int]]:
    return [((p.ColumnPositionInTotalImagePixelMatrix - 1) // tile, (p.RowPositionInTotalImagePixelMatrix - 1) // tile)
            for p in (item.PlanePositionSlideSequence[0] for item in ds.PerFrameFunctionalGroupsSequence)]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_frames_are_the_svs_tiles_in_valid_wsi_instances(series, svs, name):
    """Every file reads with pydicom; its frames are the SVS's JPEG tiles byte for byte (pydicom pads odd ones
    with one 0), at their positions; the series' attributes are the promised ones."""
    t, tiles = SLIDE["tile_size"], svs_tiles(svs)
    found: dict[int, list[tuple[int, int]]] = {}
    uids = set()
    for path in files(series[name]):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6"
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration) == ("RGB", 3, 0)
        assert (ds.Rows, ds.Columns) == (t, t)
        level = LEVELS.index((ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows))
        assert list(ds.ImageType) == (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0
                                      else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert [float(v) for v in spacing] == pytest.approx(
            [0.25 * SIZE[1] / LEVELS[level][1] / 1000, 0.25 * SIZE[0] / LEVELS[level][0] / 1000], rel=1e-9)
        uids.add((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID))
        across = -(-LEVELS[level][0] // t)
        frames = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
        assert len(frames) == ds.NumberOfFrames
        if ds.DimensionOrganizationType == "TILED_SPARSE":
            where = positions(ds, t)
        else:
            start = int(ds.get("ConcatenationFrameOffsetNumber", 0))
            where = [(k % across, k // across) for k in range(start, start + len(frames))]
        for frame, (tx, ty) in zip(frames, where):
            tile = tiles[level][ty * across + tx]
            assert frame == tile + b"\0" * (len(tile) % 2)
        found.setdefault(level, []).extend(where)
        if "ConcatenationUID" in ds:
            assert 1 <= ds.InConcatenationNumber <= ds.InConcatenationTotalNumber
            assert ds.NumberOfFrames <= VARIANTS[name]["frames_per_instance"]
    assert len(uids) == 1
    missing = set(VARIANTS[name].get("missing", ()))
    for level, (w, h) in enumerate(LEVELS):
        everything = {(tx, ty) for ty in range(-(-h // t)) for tx in range(-(-w // t))}
        assert sorted(found[level]) == sorted(everything - {(x, y) for lv, x, y in missing if lv == level})
    if VARIANTS[name].get("sparse"):
        assert found[0] != sorted(found[0], key=lambda p: (p[1], p[0]))  # not row-major: positions must be used


def test_concatenation_members_and_their_attributes(series):
    level0 = [pydicom.dcmread(p, stop_before_pixels=True) for p in files(series["concatenated"])
              if p.name.startswith("level0_")]
    assert len(level0) == 16  # 48 frames, 3 per file
    assert len({ds.ConcatenationUID for ds in level0}) == 1
    assert len({ds.SOPInstanceUIDOfConcatenationSource for ds in level0}) == 1
    assert sorted(ds.InConcatenationNumber for ds in level0) == list(range(1, 17))
    assert {ds.InConcatenationTotalNumber for ds in level0} == {16}
    assert sorted(ds.ConcatenationFrameOffsetNumber for ds in level0) == list(range(0, 48, 3))
    assert len({ds.SOPInstanceUID for ds in level0}) == 16
    assert sorted(p.name for p in files(series["concatenated"]))[-3:] == ["level1_1.dcm", "level1_2.dcm", "level2.dcm"]


def test_a_header_only_read_finds_the_class_and_series(series):
    """What histofast.export.inputs reads to group a folder's files into slides."""
    seen = set()
    for name, first in series.items():
        headers = [pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesInstanceUID"])
                   for p in files(first)]
        assert {str(h.SOPClassUID) for h in headers} == {"1.2.840.10008.5.1.4.1.1.77.1.6"}
        uids = {str(h.SeriesInstanceUID) for h in headers}
        assert len(uids) == 1 and not uids & seen, name
        seen |= uids


def test_a_folder_walk_takes_each_series_once(series):
    found = find_slides([series["concatenated"].parent.parent])
    assert sorted(Path(p).parent.name for p in found.slides) == sorted(VARIANTS)
    assert found.skipped == []
    assert Path(find_slides([series["concatenated"].parent]).slides[0]) == series["concatenated"]


def test_the_same_arguments_give_the_same_files(tmp_path, series):
    again = synth_dicom.write_dicom_slide(tmp_path / "again", *SIZE, **SLIDE, **VARIANTS["sparse-concatenated"])
    assert [p.name for p in files(again)] == [p.name for p in files(series["sparse-concatenated"])]
    for a, b in zip(files(again), files(series["sparse-concatenated"])):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert again.name == "level0_01.dcm"


def test_bad_arguments(tmp_path):
    with pytest.raises(HistofastError, match="only with sparse=True"):
        synth_dicom.write_dicom_slide(tmp_path, *SIZE, **SLIDE, missing=[(0, 0, 0)])
    with pytest.raises(HistofastError, match="outside its 8×6 tiles"):
        synth_dicom.write_dicom_slide(tmp_path, *SIZE, **SLIDE, sparse=True, missing=[(0, 8, 0)])
    with pytest.raises(HistofastError, match="level 3 not in 0..2"):
        synth_dicom.write_dicom_slide(tmp_path, *SIZE, **SLIDE, corrupt=[(3, 0, 0)])
    with pytest.raises(HistofastError, match="every tile of level 2"):
        synth_dicom.write_dicom_slide(tmp_path, *SIZE, **SLIDE, sparse=True, missing=[(2, 0, 0)])
    with pytest.raises(HistofastError, match="frames_per_instance"):
        synth_dicom.write_dicom_slide(tmp_path, *SIZE, **SLIDE, frames_per_instance=0)
    assert not list(tmp_path.glob("*.dcm"))


def test_a_2048x1536_slide_is_written_fast(tmp_path):
    import time

    start = time.perf_counter()
    path = synth_dicom.write_dicom_slide(tmp_path, 2048, 1536, seed=1)
    assert time.perf_counter() - start < 10  # about 0.2 s here; generous for loaded CI machines
    with openslide.OpenSlide(os.fspath(path)) as osr:
        assert osr.level_dimensions == ((2048, 1536),)
