"""`histofast bench --peers`: cuCIM and tiffslide timed beside the recipe on its rows and checked against its keep
decisions where installed; reported as skipped (with the install line) and never failing the run where not."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from histofast.benchmark import methods as m
from histofast.benchmark.flags import LABELS, PEERS
from histofast.benchmark.report import Result, check_results
from histofast.cli import main


def bench(tmp_path, *extra: str) -> tuple[int, Path]:
    """Run a small `histofast bench` (recipe and tile_grid unless --methods says otherwise); (status, JSON path)."""
    report = tmp_path / "bench.json"
    argv = ["bench", "--size", "1536", "--repeats", "1", "--recipe-tiles", "4", "--threads", "2", "-q",
            "--methods", "recipe,tile_grid", "--cache-dir", str(tmp_path / "cache"), "--json", str(report), *extra]
    return main(argv), report


def test_missing_peers_are_skipped(tmp_path, capsys, monkeypatch):
    for module in ("cucim", "tiffslide"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError: as if not installed
    rc, report = bench(tmp_path, "--peers")
    assert rc == 0
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    skipped = {s["method"]: s for s in data["skipped"]}
    assert set(skipped) == set(PEERS)
    for peer in PEERS:
        assert skipped[peer]["reason"].startswith("not installed")
        assert skipped[peer]["install"] == m.PEER_INSTALL[peer]
        assert f"skipped {LABELS[peer]}: not installed" in out
    assert {r["method"] for r in data["results"]} == {"recipe", "tile_grid"}
    assert data["config"]["peers"] == {}


@pytest.mark.parametrize("peer", PEERS)
def test_peer_matches_the_recipe(tmp_path, capsys, make_slide, peer):
    pytest.importorskip("cv2")
    reason = m.peer_unavailable(peer, make_slide(1024, 1024))
    if reason is not None:
        pytest.skip(f"{peer}: {reason}")
    rc, report = bench(tmp_path, "--methods", f"recipe,tile_grid,{peer}")
    assert rc == 0
    data = json.loads(report.read_text())
    assert not data["checks"]["problems"] and not data["checks"]["peer_mismatches"]
    for stride in (512, 256):
        check = data["checks"][f"{peer}_vs_recipe_stride{stride}"]
        assert check["keep_differs"] == 0 and check["tiles"] > 0
        result = next(r for r in data["results"] if r["method"] == peer and r["stride"] == stride)
        recipe = next(r for r in data["results"] if r["method"] == "recipe" and r["stride"] == stride)
        assert result["tiles_scored"] == recipe["tiles_scored"] and result["area_px"] == recipe["area_px"]
        assert result["ratio_vs_recipe"] > 0 and result["ratio_vs_tile_grid"] > 0
    assert data["config"]["peers"][peer]["version"]
    assert LABELS[peer] in capsys.readouterr().out


def scored(method: str, ratios: list[float]) -> Result:
    ratio = np.array([ratios])
    return Result(method, 512, m.Work(ratio.size, 1, int((ratio <= m.MAX_WHITE).sum()), {"white_ratio": ratio}))


def test_peer_mismatch_is_reported_not_fatal():
    results = [scored("recipe", [0.1, 0.9]), scored("tile_grid", [0.1, 0.9]), scored("tiffslide", [0.1, 0.2])]
    checks = check_results(results, {512: [0]})
    assert not checks["problems"]
    assert checks["tiffslide_vs_recipe_stride512"]["keep_differs"] == 1
    assert checks["peer_mismatches"] == ["stride 512: 1 of 2 tiffslide keep decisions differ from the recipe's"]
    # Without the recipe a peer is compared with tile_grid on the same rows.
    checks = check_results(results[1:], {512: [0]})
    assert checks["tiffslide_vs_tile_grid_stride512"]["keep_differs"] == 1
