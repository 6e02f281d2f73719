"""Exports after faults (issue 15, items 6, 7, 8, 10, 15): a slide that failed before writing anything never
blocks a corrected rerun; a resume removes the temporary files a killed run left (only histofast's, only in that
slide's folder, and OUT's top manifest under OUT's lock); a slide smaller than one tile is "0 tiles, warning" like
a slide without tissue, in every API; any exception in one slide fails only that slide; a full disk writing
OUT/manifest.csv is a clear error, not a traceback."""
from __future__ import annotations

import csv
import errno
import logging
import os
from pathlib import Path

import pytest

import histofast
from histofast import HistofastError, SlideError
from histofast.cli import main
from histofast.export import ExportOptions, export_slide, export_slides
from histofast.export.tfrecord import _temp_name
from histofast.utils.atomic import (
    TEMPORARY_NAME,
    remove_stale_temporary_files,
    stale_temporary_files,
    temporary_name,
)

TILE, STRIDE = 256, 192


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """A slide with tissue, one without, one smaller than a 256² tile (and smaller than 512² at level 0)."""
    folder = tmp_path_factory.mktemp("fault-slides")
    histofast.synth.write_slide(folder / "case-01.svs", 1800, 1300, seed=7, tissue_fraction=0.5, min_level_size=256)
    histofast.synth.write_slide(folder / "blank.svs", 800, 600, seed=1, tissue_fraction=0.0)
    histofast.synth.write_slide(folder / "tiny.svs", 400, 200, seed=3, tissue_fraction=0.5)
    return folder


def _manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ item 7: no settings.json from a failed attempt


def test_a_slide_failing_before_any_output_does_not_block_the_corrected_rerun(slides, tmp_path):
    slide = slides / "case-01.svs"
    with pytest.raises(HistofastError, match="level=7"):  # fails after the slide opened, before any tile
        export_slide(slide, tmp_path, ExportOptions(TILE, STRIDE, level=7, format="none"))
    assert not (tmp_path / "case-01" / "settings.json").exists()
    result = export_slide(slide, tmp_path, ExportOptions(TILE, STRIDE, format="none"))
    assert result.status == "done" and result.kept > 0


def test_a_slide_failing_at_its_first_tile_does_not_block_a_rerun_with_other_settings(slides, tmp_path, monkeypatch):
    import histofast.export.writer as writer

    def failing(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(writer, "encode_image", failing)
    [result] = export_slides([slides / "case-01.svs"], tmp_path, ExportOptions(TILE, STRIDE), progress=False)
    assert result.status == "failed" and "disk full" in result.error
    assert not (tmp_path / "case-01").exists()  # nothing exported: nothing left
    monkeypatch.undo()
    [result] = export_slides([slides / "case-01.svs"], tmp_path, ExportOptions(TILE, TILE), progress=False)
    assert result.status == "done" and result.kept > 0


def test_a_half_done_export_keeps_its_settings_and_refuses_other_ones(slides, tmp_path, monkeypatch):
    import histofast.export.writer as writer

    encode, calls = writer.encode_image, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full (simulated)")
        return encode(*args, **kwargs)

    monkeypatch.setattr(writer, "encode_image", failing)
    [result] = export_slides([slides / "case-01.svs"], tmp_path, ExportOptions(TILE, STRIDE), progress=False)
    assert result.status == "failed" and (tmp_path / "case-01" / "settings.json").exists()
    assert list((tmp_path / "case-01").glob("*.jpg"))
    monkeypatch.undo()
    with pytest.raises(HistofastError, match="other settings"):
        export_slide(slides / "case-01.svs", tmp_path, ExportOptions(TILE, TILE))
    assert export_slide(slides / "case-01.svs", tmp_path, ExportOptions(TILE, STRIDE)).status == "done"


def test_a_finished_export_with_other_settings_is_still_refused(slides, tmp_path):
    export_slide(slides / "case-01.svs", tmp_path, ExportOptions(TILE, STRIDE, format="none"))
    with pytest.raises(HistofastError, match="other settings"):
        export_slide(slides / "case-01.svs", tmp_path, ExportOptions(TILE, TILE, format="none"))


# ------------------------------------------------------------------ item 8: stale temporary files


def test_histofast_temporary_names_are_what_the_cleanup_matches(tmp_path):
    for name in (temporary_name("a.jpg"), Path(_temp_name(os.fspath(tmp_path / "s-00000.tfrecord"))).name,
                 Path(_temp_name(os.fspath(tmp_path / "s-00000.tfrecord.idx"))).name):
        assert TEMPORARY_NAME.fullmatch(name), name
    for name in ("a.tmp", ".a.tmp", ".a.0123456789AB.tmp", ".a.0123456789a.tmp", "a.0123456789ab.tmp",
                 ".a.0123456789ab.tmp.jpg"):
        assert not TEMPORARY_NAME.fullmatch(name), name


def test_stale_temporary_files_lists_only_histofast_names_in_that_folder(tmp_path):
    ours = [tmp_path / temporary_name("x.jpg"), tmp_path / ".x.tfrecord.0123456789ab.tmp"]
    theirs = [tmp_path / "notes.tmp", tmp_path / ".editor.swp.tmp", tmp_path / "x.jpg"]
    (tmp_path / "sub").mkdir()
    deeper = tmp_path / "sub" / temporary_name("y.jpg")
    (tmp_path / ".d.0123456789ab.tmp").mkdir()  # a folder named like one: not ours to remove
    for p in ours + theirs + [deeper]:
        p.write_bytes(b"x")
    assert sorted(stale_temporary_files(tmp_path)) == sorted(ours)
    assert sorted(remove_stale_temporary_files(tmp_path)) == sorted(ours)
    assert all(p.exists() for p in theirs + [deeper]) and not any(p.exists() for p in ours)
    assert stale_temporary_files(tmp_path / "missing") == [] == remove_stale_temporary_files(tmp_path / "missing")


@pytest.mark.parametrize("fmt", ["jpg", "tfrecord"])
def test_a_resume_removes_a_killed_runs_temporary_files(slides, tmp_path, monkeypatch, fmt):
    import histofast.export.writer as writer

    options = ExportOptions(TILE, STRIDE, format=fmt, shard_tiles=5)
    encode, calls = writer.encode_image, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 8:
            raise OSError("killed (simulated)")
        return encode(*args, **kwargs)

    monkeypatch.setattr(writer, "encode_image", failing)
    [result] = export_slides([slides / "case-01.svs"], tmp_path, options, progress=False)
    assert result.status == "failed"
    monkeypatch.undo()
    folder = tmp_path / "case-01"
    # what kill -9 leaves: the writers' half-written files under their temporary names
    stale = [folder / temporary_name("case-01_x0_y0.jpg"), folder / temporary_name("manifest.csv"),
             folder / temporary_name("settings.json"),
             Path(_temp_name(os.fspath(folder / "case-01-00009.tfrecord"))),
             Path(_temp_name(os.fspath(folder / "case-01-00009.tfrecord.idx")))]
    # a killed run's top manifest is removed too, by the next top-manifest writer under OUT's lock
    stale.append(tmp_path / temporary_name("manifest.csv"))
    kept = [folder / "notes.tmp", tmp_path / "other" / temporary_name("other_x0_y0.jpg")]
    (tmp_path / "other").mkdir()
    for p in stale + kept:
        p.write_bytes(b"half")
    [result] = export_slides([slides / "case-01.svs"], tmp_path, options, progress=False)
    assert result.status == "done"
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


# ------------------------------------------------------------------ item 15: smaller than one tile = 0 tiles


def test_tile_grid_and_iter_tiles_still_refuse_a_slide_smaller_than_a_tile(slides):
    with pytest.raises(SlideError, match="smaller than one tile"):
        histofast.tile_grid(slides / "tiny.svs", TILE)
    with pytest.raises(SlideError, match="smaller than one tile"):
        histofast.iter_tiles(slides / "tiny.svs", TILE)


def test_export_slide_of_a_slide_smaller_than_a_tile_is_done_with_0_tiles(slides, tmp_path, caplog):
    options = ExportOptions(TILE, format="png")
    with caplog.at_level(logging.WARNING, logger="histofast.export"):
        result = export_slide(slides / "tiny.svs", tmp_path, options, qc=True)
    assert (result.status, result.kept, result.total, result.rows) == ("done", 0, 0, [])
    assert "smaller than one tile" in result.warning and "smaller than one tile" in caplog.text
    assert result.decoder
    folder = tmp_path / "tiny"
    assert _manifest(folder / "manifest.csv") == [] and _manifest(folder / "grid.csv") == []
    assert (folder / "settings.json").exists() and (folder / "qc.png").exists()
    again = export_slide(slides / "tiny.svs", tmp_path, options)
    assert (again.status, again.kept, again.total) == ("skipped", 0, 0)


def test_a_folder_of_mixed_slides_exits_0_with_warnings_for_both_empty_ones(slides, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["tile", os.fspath(slides), "--out", os.fspath(out), "--tile-size", str(TILE), "--quiet"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "3 slides tiled" in captured.out and "0 failed" in captured.out and "FAILED" not in captured.err
    assert "blank.svs" in captured.err and "tiny.svs" in captured.err
    tiny = [line for line in captured.err.splitlines() if "tiny.svs" in line]
    assert any("smaller than one tile" in line for line in tiny), tiny  # the real reason, not "try --max-white"
    top = _manifest(out / "manifest.csv")
    assert top and {Path(r["slide"]).name for r in top} == {"case-01.svs"}
    for name in ("blank", "tiny"):
        assert _manifest(out / name / "manifest.csv") == []


def test_export_slides_of_mixed_slides_reports_each_as_done(slides, tmp_path):
    paths = [slides / "tiny.svs", slides / "blank.svs", slides / "case-01.svs"]
    results = export_slides(paths, tmp_path, ExportOptions(TILE, STRIDE, format="none"), progress=False)
    assert [r.status for r in results] == ["done"] * 3
    assert [r.kept == 0 for r in results] == [True, True, False]
    assert results[0].warning and results[1].warning is None


def test_the_cluster_path_reports_a_slide_smaller_than_a_tile_as_done(slides, tmp_path):
    pytest.importorskip("distributed")
    from histofast.export.cluster import export_slides_distributed, local_cluster

    paths = [slides / "tiny.svs", slides / "blank.svs"]
    with local_cluster(1) as client:
        results = export_slides_distributed(paths, tmp_path, ExportOptions(TILE, format="png"), client, threads=1,
                                            progress=False)
    assert [(r.status, r.kept, r.error) for r in results] == [("done", 0, None)] * 2
    assert _manifest(tmp_path / "manifest.csv") == []
    assert _manifest(tmp_path / "tiny" / "manifest.csv") == []


# ------------------------------------------------------------------ item 10: any exception fails only its slide


def _failing_open(monkeypatch, name: str, error: BaseException) -> None:
    """``open_slide`` raising ``error`` for the slide file ``name``."""
    import histofast.export.slides as export

    open_slide = export.open_slide

    def failing(path, *args, **kwargs):
        if Path(path).name == name:
            raise error
        return open_slide(path, *args, **kwargs)

    monkeypatch.setattr(export, "open_slide", failing)


@pytest.mark.parametrize("error", [MemoryError("cannot allocate (simulated)"), ValueError("bad value (simulated)"),
                                   RuntimeError("a bug (simulated)")], ids=lambda e: type(e).__name__)
def test_any_exception_in_one_slide_fails_that_slide_only(slides, tmp_path, monkeypatch, error):
    _failing_open(monkeypatch, "blank.svs", error)
    paths = [slides / "blank.svs", slides / "case-01.svs"]
    failed, done = export_slides(paths, tmp_path, ExportOptions(TILE, STRIDE, format="none"), progress=False)
    assert (failed.slide, failed.status, failed.error) == (os.fspath(paths[0]), "failed",
                                                           f"{type(error).__name__}: {error}")
    assert done.status == "done" and done.kept > 0
    assert _manifest(tmp_path / "manifest.csv") == _manifest(tmp_path / "case-01" / "manifest.csv")
    assert not (tmp_path / "blank").exists()


def test_the_command_names_the_exception_of_a_failing_slide(slides, tmp_path, monkeypatch, capsys):
    _failing_open(monkeypatch, "blank.svs", RuntimeError("a bug (simulated)"))
    status = main(["tile", os.fspath(slides / "blank.svs"), os.fspath(slides / "case-01.svs"), "--out",
                   os.fspath(tmp_path), "--tile-size", str(TILE), "--format", "none", "--quiet"])
    captured = capsys.readouterr()
    assert status == 1 and "1 slides tiled, 0 already done, 1 failed" in captured.out
    assert f"FAILED {slides / 'blank.svs'}: RuntimeError: a bug (simulated)" in captured.err


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_and_exit_still_stop_the_export(slides, tmp_path, monkeypatch, error):
    _failing_open(monkeypatch, "blank.svs", error())
    with pytest.raises(error):
        export_slides([slides / "blank.svs", slides / "case-01.svs"], tmp_path, ExportOptions(TILE), progress=False)
    assert not (tmp_path / "blank").exists() and not (tmp_path / "case-01").exists()


# ------------------------------------------------------------------ item 6: a full disk writing OUT/manifest.csv


def test_a_full_disk_writing_the_top_manifest_is_a_clear_error_and_a_rerun_writes_it(slides, tmp_path, monkeypatch,
                                                                                      capsys):
    import histofast.export.slides as export

    out, atomic_open = tmp_path / "out", export.atomic_open

    def full(path, *args, **kwargs):
        if Path(path) == out / "manifest.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return atomic_open(path, *args, **kwargs)

    monkeypatch.setattr(export, "atomic_open", full)
    args = ["tile", os.fspath(slides / "case-01.svs"), "--out", os.fspath(out), "--tile-size", str(TILE),
            "--format", "none", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out / 'manifest.csv'}: not written ({os.strerror(errno.ENOSPC)})" in err and "Traceback" not in err
    assert not (out / "manifest.csv").exists() and not list(out.glob(".*.tmp"))
    with pytest.raises(HistofastError, match=os.strerror(errno.ENOSPC)):
        export_slides([slides / "case-01.svs"], out, ExportOptions(TILE, format="none"), progress=False)
    monkeypatch.undo()
    assert main(args) == 0
    assert _manifest(out / "manifest.csv") == _manifest(out / "case-01" / "manifest.csv") != []
