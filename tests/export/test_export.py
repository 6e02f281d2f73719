"""Exporting tiles (histofast.export) and the `histofast` command: files, shards, manifests, QC,
atomic and resumable writes, one failing slide never stopping the others."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

import histofast
from histofast import HistofastError
from histofast.cli import main
from histofast.export import ExportOptions, export_slide, export_slides
from histofast.export.tfrecord import decode_example, read_tfrecord

TILE, STRIDE = 256, 192


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "case-01.svs"
    return histofast.synth.write_slide(path, 1800, 1300, seed=7, tissue_fraction=0.5, min_level_size=256)


@pytest.fixture(scope="module")
def grid(slide):
    return histofast.tile_grid(slide, TILE, STRIDE)


def _manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_png_export_is_the_kept_tiles_exactly(slide, grid, tmp_path):
    [result] = export_slides([slide], tmp_path, ExportOptions(TILE, STRIDE, format="png"), progress=False)
    assert (result.status, result.kept, result.total) == ("done", len(grid), grid.white_ratio.size)
    rows = _manifest(tmp_path / "case-01" / "manifest.csv")
    assert [(int(r["x"]), int(r["y"])) for r in rows] == [tuple(c) for c in grid.coords]
    assert _manifest(tmp_path / "manifest.csv") == rows
    from PIL import Image

    with histofast.open_slide(slide) as s:
        for r in rows[:: max(1, len(rows) // 10)]:
            tile = np.asarray(Image.open(tmp_path / r["file"]))
            np.testing.assert_array_equal(tile, s.read_region((int(r["x"]), int(r["y"])), 0, (TILE, TILE)))
            assert float(r["white_ratio"]) <= 0.5
    regrid = histofast.TileGrid.from_csv(tmp_path / "case-01" / "grid.csv")
    np.testing.assert_array_equal(regrid.white_ratio, grid.white_ratio)
    assert not _leftovers(tmp_path)


def test_jpg_export_and_qc(slide, grid, tmp_path):
    assert main([os.fspath(x) for x in ("tile", slide)] + ["--out", os.fspath(tmp_path), "--tile-size", str(TILE),
                                                          "--stride", str(STRIDE), "--qc", "--quiet"]) == 0
    files = sorted((tmp_path / "case-01").glob("*.jpg"))
    assert len(files) == len(grid)
    from PIL import Image

    qc = Image.open(tmp_path / "case-01" / "qc.png")
    assert qc.format == "PNG" and max(qc.size) <= 2048 and qc.size[0] > qc.size[1]


def test_nvimgcodec_export_is_the_same_files_and_says_what_decoded(slide, tmp_path, capsys):
    pytest.importorskip("nvidia.nvimgcodec")
    argv = ["tile", os.fspath(slide), "--tile-size", str(TILE), "--stride", str(STRIDE), "--format", "png", "--quiet"]
    assert main(argv + ["--out", os.fspath(tmp_path / "nv"), "--decode", "nvimgcodec-cpu"]) == 0
    assert "decoded by nvimgcodec-cpu" in capsys.readouterr().out
    assert main(argv + ["--out", os.fspath(tmp_path / "cpu")]) == 0
    assert "decoded by tiff" in capsys.readouterr().out
    files = sorted(p.relative_to(tmp_path / "cpu") for p in (tmp_path / "cpu").rglob("*.png"))
    assert files and files == sorted(p.relative_to(tmp_path / "nv") for p in (tmp_path / "nv").rglob("*.png"))
    assert all((tmp_path / "cpu" / f).read_bytes() == (tmp_path / "nv" / f).read_bytes() for f in files)


def test_tfrecord_shards_hold_every_kept_tile_once(slide, grid, tmp_path):
    options = ExportOptions(TILE, STRIDE, format="tfrecord", label=2, shard_tiles=7)
    export_slides([slide], tmp_path, options, progress=False)
    shards = sorted((tmp_path / "case-01").glob("*.tfrecord"))
    assert len(shards) == -(-len(grid) // 7)
    seen = []
    for shard in shards:
        records = list(read_tfrecord(shard))
        index = Path(f"{shard}.idx").read_text().split("\n")[:-1]
        assert len(index) == len(records)
        for data in records:
            ex = decode_example(data)
            assert ex["label"] == [2] and ex["slide"] == b"case-01" and ex["format"] == b"jpg"
            seen.append((ex["x"][0], ex["y"][0]))
    assert seen == [tuple(c) for c in grid.coords]
    rows = _manifest(tmp_path / "manifest.csv")
    assert [(r["file"], int(r["record"])) for r in rows][:8] == [
        (f"case-01/case-01-0000{k // 7}.tfrecord", k % 7) for k in range(8)]


def test_unlabelled_tiles_carry_no_label_minus_100(slide, tmp_path):
    from histofast.cli import build_parser
    from histofast.data.sources import NO_LABEL

    assert ExportOptions().label == NO_LABEL == -100
    assert build_parser().parse_args(["tile", "x.svs", "--out", "o"]).label == NO_LABEL
    export_slides([slide], tmp_path, ExportOptions(TILE, STRIDE, format="tfrecord"), progress=False)
    [shard] = sorted((tmp_path / "case-01").glob("*.tfrecord"))
    assert {decode_example(data)["label"][0] for data in read_tfrecord(shard)} == {NO_LABEL}


def test_rerun_skips_a_finished_slide(slide, tmp_path):
    options = ExportOptions(TILE, STRIDE, format="jpg")
    first = export_slide(slide, tmp_path, options)
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "case-01").iterdir()}
    again = export_slide(slide, tmp_path, options)
    assert again.status == "skipped" and (again.kept, again.total) == (first.kept, first.total)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "case-01").iterdir()} == stamp


@pytest.mark.parametrize("fmt", ["jpg", "tfrecord"])
def test_interrupted_export_resumes_without_duplicates_or_gaps(slide, grid, tmp_path, monkeypatch, fmt):
    import histofast.export.writer as export

    options = ExportOptions(TILE, STRIDE, format=fmt, shard_tiles=5)
    encode, calls = export.encode_image, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > len(grid) // 2:
            raise OSError("disk full (simulated)")
        return encode(*args, **kwargs)

    monkeypatch.setattr(export, "encode_image", failing)
    [result] = export_slides([slide], tmp_path, options, progress=False)
    assert result.status == "failed" and "disk full" in result.error
    assert not (tmp_path / "case-01" / "manifest.csv").exists() and not _leftovers(tmp_path)
    written = {p.name for p in (tmp_path / "case-01").iterdir()}
    monkeypatch.setattr(export, "encode_image", encode)
    [result] = export_slides([slide], tmp_path, options, progress=False)
    assert result.status == "done" and result.kept == len(grid)
    rows = _manifest(tmp_path / "case-01" / "manifest.csv")
    assert len(rows) == len(grid) and len({(r["x"], r["y"]) for r in rows}) == len(grid)
    names = {p.name for p in (tmp_path / "case-01").iterdir()}
    assert written <= names
    if fmt == "jpg":
        assert len([n for n in names if n.endswith(".jpg")]) == len(grid)
    else:
        total = sum(len(list(read_tfrecord(p))) for p in (tmp_path / "case-01").glob("*.tfrecord"))
        assert total == len(grid)


def test_a_failing_slide_does_not_stop_the_others(slide, tmp_path, capsys):
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    truncated = tmp_path / "cut.svs"
    truncated.write_bytes(Path(slide).read_bytes()[: Path(slide).stat().st_size * 2 // 3])
    out = tmp_path / "out"
    status = main(["tile", os.fspath(text), os.fspath(truncated),
                   os.fspath(slide), "--out", os.fspath(out), "--tile-size", str(TILE), "--quiet"])
    err = capsys.readouterr()
    assert status == 1
    assert "notes.svs" in err.err and "cut.svs" in err.err  # a missing SLIDE stops the run: tests/cli
    assert "1 slides tiled" in err.out and "2 failed" in err.out
    assert (out / "case-01" / "manifest.csv").exists() and not _leftovers(out)


def test_changed_settings_are_not_mixed_into_an_export(slide, tmp_path):
    export_slide(slide, tmp_path, ExportOptions(TILE, STRIDE, format="none"))
    with pytest.raises(HistofastError, match="other settings"):
        export_slide(slide, tmp_path, ExportOptions(TILE, TILE, format="none"))


def test_zero_tissue_warns_and_succeeds(tmp_path, capsys):
    empty = histofast.synth.write_slide(tmp_path / "empty.svs", 800, 600, seed=1, tissue_fraction=0.0)
    assert main(["tile", os.fspath(empty), "--out", os.fspath(tmp_path / "o"), "--tile-size", "256", "--quiet"]) == 0
    assert "no tissue tiles" in capsys.readouterr().err


def test_slide_smaller_than_a_tile_is_0_tiles_and_a_warning(slide, tmp_path, capsys):
    assert main(["tile", os.fspath(slide), "--out", os.fspath(tmp_path), "--tile-size", "4096", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "FAILED" not in captured.err and "1 slides tiled" in captured.out
    assert _manifest(tmp_path / "case-01" / "manifest.csv") == []


def test_unwritable_output(slide, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["tile", os.fspath(slide), "--out", os.fspath(blocker / "sub"), "--quiet"]) == 2
    assert "not a writable directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--max-white", "1.5"], "--max-white 1.5"),
        (["--tile-size", "0"], "--tile-size 0"),
        (["--stride", "-3"], "--stride -3"),
        (["--hsv-lower", "0", "0", "300"], "--hsv-lower V 300"),
        (["--augment", "rot90,zoom=2"], "'zoom=2' is not"),
        (["--level", "5"], "--level 5"),
        (["--decode", "gpu"], "--decode 'gpu' decodes into GPU memory: it needs --device 'cuda'"),
        (["--device", "tpu"], "--device 'tpu': expected 'cpu', 'cuda' or 'cuda:<index>'"),
    ],
)
def test_bad_arguments_name_the_problem(slide, tmp_path, capsys, argv, fragment):
    status = main(["tile", os.fspath(slide), "--out", os.fspath(tmp_path), "--quiet"] + argv)
    assert status in (1, 2) and fragment in capsys.readouterr().err


def test_help_reads_well(capsys):
    for argv in (["--help"], ["tile", "--help"], ["demo", "--help"], ["bench", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-white" in out and "tfrecord" in out and "--magnification" in out


def test_demo_runs_the_main_job(tmp_path, capsys):
    assert main(["demo", "--size", "1536", "--out", os.fspath(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tiles/s" in out and (tmp_path / "tiles" / "synthetic-1536" / "qc.png").exists()
