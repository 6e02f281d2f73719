"""What `histofast tile` takes from folders and how slide folders are tied to their sources (issue 21, items 1, 2,
8, 11): stems shared by two files give two folders; a folder made from another file is refused naming both; folder
trees are walked recursively with every file not taken listed with its reason; a DICOM WSI series is one slide,
read as OpenSlide reads it; MIRAX data folders and VMS side files are part of their slide; flags are named as typed."""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import histofast
from histofast import SlideError
from histofast.cli import main
from histofast.cli.common import slide_paths
from histofast.export import ExportOptions, export_slide, find_slides

TILE = ["--tile-size", "256", "--quiet"]
README = Path(__file__).resolve().parents[2] / "README.md"


def _manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png(path: Path, size: int = 512, value: int = 120) -> Path:
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture()
def twins(tmp_path) -> Path:
    """boxes.png + boxes.tiff and 😐.png + 😐.svs: two pairs of slides sharing a stem in one folder."""
    folder = tmp_path / "FOLDER"
    folder.mkdir()
    _png(folder / "boxes.png")
    _png(folder / "😐.png", value=90)
    histofast.synth.write_slide(folder / "boxes.tiff", 768, 768, seed=1)
    histofast.synth.write_slide(folder / "😐.svs", 768, 768, seed=2)
    return folder


def test_slides_sharing_a_stem_each_get_their_own_folder(twins, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tile", os.fspath(twins), "--out", os.fspath(out)] + TILE) == 0
    assert "4 slides tiled, 0 already done, 0 failed" in capsys.readouterr().out
    folders = {"boxes_png": "boxes.png", "boxes_tiff": "boxes.tiff", "😐_png": "😐.png", "😐_svs": "😐.svs"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(folders)
    for folder, name in folders.items():
        rows = _manifest(out / folder / "manifest.csv")
        assert rows and {Path(r["slide"]).name for r in rows} == {name}


def test_a_folder_made_from_another_source_is_refused_naming_both(twins, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tile", os.fspath(twins / "boxes.png"), "--out", os.fspath(out)] + TILE) == 0
    before = _manifest(out / "boxes" / "manifest.csv")
    capsys.readouterr()
    assert main(["tile", os.fspath(twins / "boxes.tiff"), "--out", os.fspath(out)] + TILE) == 1
    captured = capsys.readouterr()
    assert "0 slides tiled, 0 already done, 1 failed" in captured.out
    [line] = [x for x in captured.err.splitlines() if x.startswith("FAILED")]
    assert "holds the export of another slide" in line and "boxes.png" in line and "boxes.tiff" in line
    assert _manifest(out / "boxes" / "manifest.csv") == before
    with pytest.raises(SlideError, match=r"export of another slide, .*boxes\.png \(this one is .*boxes\.tiff"):
        export_slide(twins / "boxes.tiff", out, ExportOptions(256), slide_id="boxes")


def test_a_source_changed_since_its_export_is_refused(twins, tmp_path):
    options = ExportOptions(256, format="none")
    assert export_slide(twins / "boxes.png", tmp_path, options).status == "done"
    assert export_slide(twins / "boxes.png", tmp_path, options).status == "skipped"
    _png(twins / "boxes.png", value=30)
    os.utime(twins / "boxes.png", ns=(1, 1))
    with pytest.raises(SlideError, match="the file changed since; remove"):
        export_slide(twins / "boxes.png", tmp_path, options)


def test_folder_trees_are_walked_recursively_and_every_other_file_is_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    histofast.synth.write_region_dataset("slides", classes=("NORM", "ADC"), n_per_class=2, size=512)
    (tmp_path / "slides" / "NORM" / ".DS_Store").write_bytes(b"\0")
    assert main(["tile", "slides", "--out", "slides/tiles", "--format", "png"] + TILE) == 0
    captured = capsys.readouterr()
    assert "4 slides tiled, 0 already done, 0 failed" in captured.out and "skipped 2 input files" in captured.out
    assert re.search(r"slides/manifest\.csv: a file not named like a slide .*suffix '\.csv'", captured.err)
    assert re.search(r"slides/NORM/\.DS_Store: a file not named like a slide .*no suffix", captured.err)
    # the output folder inside the walked tree is never read as input
    assert main(["tile", "slides", "--out", "slides/tiles", "--format", "png"] + TILE) == 0
    captured = capsys.readouterr()
    assert "0 slides tiled, 4 already done" in captured.out
    assert "slides/tiles: the output folder (--out) is not read as input" in captured.err


def test_mirax_data_folders_and_vms_side_files_belong_to_their_slide(tmp_path):
    (tmp_path / "m.mrxs").write_text("[GENERAL]\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "Slidedat.ini").write_text("[GENERAL]\n")
    (tmp_path / "m" / "Data0000.dat").write_bytes(b"\0")
    (tmp_path / "v.vms").write_text("[Virtual Microscope Specimen]\nNoLayers=1\nImageFile=v.jpg\n"
                                    "ImageFile(1,0)=v_1.jpg\nMapFile=v_map.jpg\nOptimisationFile=v.opt\n")
    for name in ("v.jpg", "v_1.jpg", "v_map.jpg", "v.opt"):
        (tmp_path / name).write_bytes(b"\xff\xd8")
    (tmp_path / "notes.txt").write_text("x")
    assert slide_paths([os.fspath(tmp_path)]) == [os.fspath(tmp_path / "m.mrxs"), os.fspath(tmp_path / "v.vms")]
    assert [p for p, _ in find_slides([tmp_path]).skipped] == [os.fspath(tmp_path / "notes.txt")]


# ----------------------------------------------------------------------------------------------- DICOM WSI

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _dicom_level(path: Path, image: np.ndarray, tile: int, uids: tuple[str, str, str], mpp_um: float,
                 sop_class: str = WSI_SOP_CLASS) -> None:
    """One level of a TILED_FULL DICOM WSI (JPEG baseline frames, YBR_FULL_422), written with pydicom."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    height, width, _ = image.shape
    frames = []
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            part = np.full((tile, tile, 3), 255, np.uint8)
            block = image[y:y + tile, x:x + tile]
            part[:block.shape[0], :block.shape[1]] = block
            buf = io.BytesIO()
            Image.fromarray(part).save(buf, "JPEG", quality=95, subsampling=0)
            frames.append(buf.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = FileDataset(os.fspath(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.Modality, ds.InstanceNumber = "SM", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = tile, tile, len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = width * mpp_um / 1e3, height * mpp_um / 1e3, 1
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [mpp_um / 1e3, mpp_um / 1e3], 1
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence = [optical]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture()
def dicom_folder(tmp_path) -> Path:
    """A 2-level DICOM WSI series (one file per level, 0.25 µm/pixel at level 0) and a DICOM file of another
    SOP class (secondary capture) in one folder."""
    pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    folder = tmp_path / "dicom"
    folder.mkdir()
    image = histofast.synth.tissue_image(600, 800, seed=3)
    uids = (generate_uid(), generate_uid(), generate_uid())
    _dicom_level(folder / "wsi_0.dcm", image, 256, uids, 0.25)
    _dicom_level(folder / "wsi_1.dcm", np.asarray(Image.fromarray(image).resize((400, 300))), 256, uids, 0.5)
    _dicom_level(folder / "capture.dcm", image[:256, :256], 256, (generate_uid(), generate_uid(), generate_uid()),
                 0.25, sop_class="1.2.840.10008.5.1.4.1.1.7")
    return folder


def test_dicom_wsi_reads_as_openslide_reads_it(dicom_folder):
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(os.fspath(dicom_folder / "wsi_1.dcm")) as reference, \
            histofast.open_slide(dicom_folder / "wsi_0.dcm") as slide:
        assert slide.level_dimensions == reference.level_dimensions == ((800, 600), (400, 300))
        assert slide.mpp == pytest.approx(0.25)
        for level in range(2):
            w, h = reference.level_dimensions[level]
            expected = np.asarray(reference.read_region((0, 0), level, (w, h)).convert("RGB"))
            assert np.array_equal(slide.read_region((0, 0), level, (w, h)), expected)


def test_a_dicom_series_in_a_folder_is_tiled_once(dicom_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tile", os.fspath(dicom_folder), "--out", os.fspath(out), "--mpp", "0.5"] + TILE) == 0
    captured = capsys.readouterr()
    assert "1 slides tiled, 0 already done, 0 failed" in captured.out and "skipped 1 input files" in captured.out
    assert re.search(r"capture\.dcm: DICOM, but not a VL Whole Slide Microscopy image \(SOP class "
                     r"1\.2\.840\.10008\.5\.1\.4\.1\.1\.7\)", captured.err)
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["wsi_0"]
    grid = histofast.TileGrid.from_csv(out / "wsi_0" / "grid.csv")
    with histofast.open_slide(dicom_folder / "wsi_0.dcm") as slide:
        expected = histofast.tile_grid(slide, tile_size=256, mpp=0.5)
    assert np.array_equal(grid.white_ratio, expected.white_ratio) and grid.level == 1


# ------------------------------------------------------------------------------------- messages (item 11)

@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return histofast.synth.write_slide(tmp_path_factory.mktemp("s") / "s.svs", 768, 768, seed=4)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--tile-size", "0"], "--tile-size 0: must be a positive integer (pixels)"),
        (["--max-white", "1.5"], "--max-white 1.5: must be a fraction"),
        (["--hsv-lower", "0", "0", "300"], "--hsv-lower V 300: V must lie in [0, 255]"),
        (["--hsv-lower", "0", "0", "200", "--hsv-upper", "180", "30", "100"],
         "--hsv-lower V 200 exceeds --hsv-upper V 100"),
        (["--mpp", "0"], "--mpp 0.0: must be a positive number"),
        (["--magnification", "-20"], "--magnification -20.0: must be a positive number"),
        (["--level", "-1"], "--level -1: must be a non-negative integer"),
        (["--threads", "0"], "--threads 0: must be a positive integer"),
        (["--quality", "0"], "--quality 0: must be an integer in 1..100"),
        (["--decode", "gpu"], "--decode 'gpu' decodes into GPU memory: it needs --device 'cuda'"),
    ],
)
def test_bad_flags_are_named_as_typed_before_anything_is_written(slide, tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    assert main(["tile", os.fspath(slide), "--out", os.fspath(out)] + TILE + argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "_" not in err.split(":")[1].split()[0], err
    assert not out.exists()


def test_workers_of_0x_is_still_taken_as_threads_with_a_note(slide, tmp_path, capsys):
    """Issue 22: --threads is the decode/encode threads; 0.x's --workers still works for one release, hidden."""
    assert main(["tile", os.fspath(slide), "--out", os.fspath(tmp_path / "out"), "--workers", "1"] + TILE) == 0
    captured = capsys.readouterr()
    assert "--workers is now --threads" in captured.err and "1 slides tiled" in captured.out
    help_text = _help(capsys)
    assert "--threads N decode/encode threads (default: all cores)" in help_text and "--workers" not in help_text


def test_a_missing_input_stops_before_out_is_created(slide, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tile", os.fspath(tmp_path / "gone.svs"), os.fspath(slide), "--out", os.fspath(out)] + TILE) == 2
    assert f"no such file or folder: {tmp_path / 'gone.svs'}" in capsys.readouterr().err
    assert not out.exists()


def test_a_slide_failure_is_printed_once_and_names_the_flag(slide, tmp_path, capsys, caplog):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    with caplog.at_level(logging.WARNING):
        assert main(["tile", os.fspath(bad), os.fspath(slide), "--out", os.fspath(tmp_path / "o"), "--level", "7"]
                    + TILE) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert sum("bad.svs" in x for x in lines) == 1 and sum("/s.svs" in x for x in lines) == 1, err
    assert "FAILED" in err and "--level 7: s.svs has levels" in err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "histofast" in r.name], caplog.text


def test_other_settings_name_the_setting_that_differs(slide, tmp_path):
    export_slide(slide, tmp_path, ExportOptions(256, format="none"))
    with pytest.raises(SlideError, match=r"other settings \(tile_size 256 there, 128 now\); use another --out"):
        export_slide(slide, tmp_path, ExportOptions(128, format="none"))


# -------------------------------------------------------------------------------- the README (item 8)

def test_the_readme_tile_examples_run_on_the_readme_data(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    data = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)[0]
    assert "write_region_dataset(\"slides\"" in data
    monkeypatch.chdir(tmp_path)
    exec(compile(data, "README.md python block 1", "exec"), {"__name__": "__readme__"})
    use = text[text.index("## Use"):]
    block = re.search(r"^```bash\n(.*?)^```", use, flags=re.M | re.S)[1].replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert len(commands) >= 2 and any("slides/" in c for c in commands)
    for argv in commands:
        assert argv[:2] == ["histofast", "tile"]
        assert main(argv[1:] + ["--quiet"]) == 0, (argv, capsys.readouterr())
    help_text = _help(capsys)
    assert "walked recursively" in help_text and "skipped" in help_text


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["tile", "--help"])
    return " ".join(capsys.readouterr().out.split())
