"""Runs into one OUT at once (issue 15, items 4, 5, 6): a slide's folder is locked while it is exported (the
settings check included), so two runs with different settings never mix one folder; OUT is locked while its
manifest is written, which lists every finished slide; the writability probes of runs starting together never
collide."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import histofast
from histofast.cli import main
from histofast.export import ExportOptions, export_slides
from histofast.export.lock import LOCK_NAME, FolderLocked, folder_lock
from histofast.export.slides import _writable
from histofast.tiling import TileGrid

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("lock-slides")
    return [histofast.synth.write_slide(folder / f"{name}.svs", 2400, 1800, seed=k, tissue_fraction=0.6,
                                        min_level_size=256) for k, name in enumerate(NAMES)]


def _manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ the lock itself


def test_a_folder_lock_is_exclusive_names_its_holder_and_leaves_nothing(tmp_path):
    folder = tmp_path / "out" / "slide"
    with folder_lock(folder, blocking=False):
        assert (folder / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}") as e, folder_lock(folder, blocking=False):
            pass
        assert e.value.pid == os.getpid() and e.value.directory == folder
    assert not folder.exists() and (tmp_path / "out").exists()  # it made the folder and left it empty
    folder.mkdir()
    with folder_lock(folder, blocking=False):
        pass
    assert folder.exists() and not list(folder.iterdir())  # not its folder: kept


def test_blocking_folder_locks_serialise_read_modify_write(tmp_path):
    """Threads taking the lock over and over while each release removes the lock file: never two holders."""
    counter = tmp_path / "count"
    counter.write_text("0")

    def add() -> None:
        for _ in range(100):
            with folder_lock(tmp_path, blocking=True):
                value = int(counter.read_text())
                time.sleep(0)
                counter.write_text(str(value + 1))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "400" and not (tmp_path / LOCK_NAME).exists()


# ------------------------------------------------------------------ item 4: one export per slide folder at a time


def test_a_slide_another_run_is_exporting_is_reported_and_left_alone(slides, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["tile", os.fspath(slides[0]), os.fspath(slides[1]), "--out", os.fspath(out), "--tile-size", "256",
            "--quiet"]
    with folder_lock(out / "a", blocking=False):  # another run exporting slide a
        status = main(args)
        held = sorted(p.name for p in (out / "a").iterdir())
    captured = capsys.readouterr()
    assert status == 1
    assert held == [LOCK_NAME]  # nothing written into the other run's folder
    [line] = [line for line in captured.err.splitlines() if line.startswith("FAILED")]
    assert "a.svs" in line and f"being exported by another histofast run (pid {os.getpid()})" in line
    assert "1 slides tiled, 0 already done, 1 failed" in captured.out
    assert _manifest(out / "manifest.csv") == _manifest(out / "b" / "manifest.csv") != []
    assert main(args) == 0  # released: a rerun exports it and skips b
    assert "1 slides tiled, 1 already done, 0 failed" in capsys.readouterr().out
    assert not list(out.rglob(LOCK_NAME))


CHILD = """
import json, sys, time
from pathlib import Path
from histofast.export import ExportOptions, export_slides
out, ready, go, tile, *paths = sys.argv[1:]
options = ExportOptions(int(tile), format="jpg")
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
print(json.dumps([[r.status, r.error] for r in export_slides(paths, out, options, threads=1, progress=False)]))
"""


def test_two_processes_with_different_settings_into_one_out_never_mix_a_slide_folder(slides, tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.fspath(Path(histofast.__file__).parents[1])] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    runs = [subprocess.Popen([sys.executable, "-c", CHILD, os.fspath(out), os.fspath(tmp_path / f"ready{tile}"),
                              os.fspath(go), str(tile)] + [os.fspath(s) for s in slides],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for tile in (256, 512)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{tile}").exists() for tile in (256, 512)):
        assert time.monotonic() < deadline and all(r.poll() is None for r in runs), [r.communicate() for r in runs]
        time.sleep(0.01)
    go.touch()  # both start their first slide together
    outputs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    statuses = [json.loads(stdout) for stdout, _ in outputs]
    for k, name in enumerate(NAMES):
        # exactly one run exported each slide; the other found it locked or finished with other settings
        pair = sorted([statuses[0][k], statuses[1][k]], key=lambda s: s[0])
        assert pair[0] == ["done", None] and pair[1][0] == "failed", pair
        assert "another histofast run" in pair[1][1] or "other settings" in pair[1][1], pair
        folder = out / name
        tile = json.loads((folder / "settings.json").read_text())["tile_size"]
        rows = _manifest(folder / "manifest.csv")
        assert rows and {int(r["tile_size"]) for r in rows} == {tile}
        assert TileGrid.from_csv(folder / "grid.csv").tile_size == tile
        assert {Path(r["file"]).name for r in rows} == {p.name for p in folder.glob("*.jpg")}
        for p in folder.glob("*.jpg"):
            with Image.open(p) as image:
                assert image.size == (tile, tile), p
    assert _manifest(out / "manifest.csv") == [r for name in NAMES for r in _manifest(out / name / "manifest.csv")]
    assert not list(out.rglob(LOCK_NAME)) and not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------ item 5: the writability probe


def test_runs_probing_out_together_all_find_it_writable(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    errors: list[Exception] = []
    start = threading.Barrier(4)

    def probe() -> None:
        start.wait()
        for _ in range(200):
            try:
                _writable(out)
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(e)

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and list(out.iterdir()) == []


# ------------------------------------------------------------------ item 6: OUT/manifest.csv, every finished slide


def test_the_top_manifest_lists_every_finished_slide_of_every_run(slides, tmp_path):
    out = tmp_path / "out"
    options = ExportOptions(256, format="none")
    export_slides([slides[1]], out, options, progress=False)
    export_slides([slides[0]], out, options, progress=False)
    expected = _manifest(out / "a" / "manifest.csv") + _manifest(out / "b" / "manifest.csv")
    assert _manifest(out / "manifest.csv") == expected
    [result] = export_slides([tmp_path / "missing.svs"], out, options, progress=False)  # fails alone
    assert result.status == "failed" and not (out / "missing").exists()
    assert _manifest(out / "manifest.csv") == expected
