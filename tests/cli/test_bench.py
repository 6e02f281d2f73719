"""`histofast bench` runs end to end on a small generated slide and reports every method and target
(a smoke test: speed is measured by running it, never asserted here)."""
from __future__ import annotations

import json

from histofast.cli import main


def test_bench_smoke(tmp_path, capsys):
    report = tmp_path / "bench.json"
    argv = ["bench", "--size", "1536", "--repeats", "1", "--recipe-tiles", "2", "-q",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for method in ("(a) recipe", "(b) decode", "(c) tile_grid", "(c'') mpp x2", "(c''') dct x2", "(d) iter_tiles",
                   "(d') two_pass"):
        assert method in out
    data = json.loads(report.read_text())
    targets = {t["target"]: t for t in data["targets"]}
    assert "tile_grid >= 10x recipe at stride 256" in targets
    assert targets["tile_grid at mpp x2 (resampled) >= 0.85x tile_grid"]["ratio"] is not None
    assert data["checks"]["dct_vs_resampled_stride256"]["resample"] == "dct"
    assert not data["checks"]["problems"]  # the recipe and histofast chose the same tiles
    assert data["machine_info"]["histofast"]["cores"] >= 1


def test_bench_compares_skip_background_with_the_exact_scan_on_a_glassy_slide(tmp_path, capsys):
    report = tmp_path / "bench.json"
    argv = ["bench", "--size", "4096", "--glass", "0.7", "--repeats", "1", "--strides", "512", "-q",
            "--methods", "tile_grid,skip_background", "--cache-dir", str(tmp_path / "cache"), "--json", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(c') skip bg" in out and "agrees on" in out
    data = json.loads(report.read_text())
    agreement = data["checks"]["skip_background_stride512"]
    assert agreement["agreement"] >= 0.999 and agreement["skipped"] > 0.4 and 0.6 < agreement["glass"] < 0.8
    assert data["config"]["glass"] == 0.7 and not data["checks"]["problems"]
    skip = next(r for r in data["results"] if r["method"] == "skip_background")
    assert skip["ratio_vs_tile_grid"] is not None and skip["skipped"] == agreement["skipped"]


def test_bench_times_the_dicom_fast_path_against_openslides_dicom_read(tmp_path, capsys):
    report = tmp_path / "bench.json"
    argv = ["bench", "--size", "1536", "--repeats", "1", "--strides", "512", "-q", "--methods",
            "decode,tile_grid,dicom,dicom_openslide", "--cache-dir", str(tmp_path / "cache"), "--json", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(g) dicom" in out and "(g') dicom-os" in out
    data = json.loads(report.read_text())
    assert not data["checks"]["problems"]  # the same tiles scored the same through all three readers
    target = next(t for t in data["targets"] if t["method"] == "dicom")
    assert target["ratio"] is not None
    assert list((tmp_path / "cache").glob("*.dicom/complete"))
