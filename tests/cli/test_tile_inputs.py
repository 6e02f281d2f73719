"""What `histofast tile` and the Pipeline do with slide paths that are not regular files (issue 15, item 9):
named, with the reason, never skipped silently, never a hang; the other slides still finish."""
from __future__ import annotations

import os

import pytest

import histofast
from histofast.cli import main


def _odd_folder(root, slide):
    """A folder with one good slide and a FIFO, a broken link, a link loop and a directory named like slides."""
    folder = root / "in"
    folder.mkdir()
    os.link(slide, folder / "good.svs")
    os.mkfifo(folder / "fifo.svs")
    (folder / "broken.svs").symlink_to(root / "gone.svs")
    (folder / "loop1.svs").symlink_to(folder / "loop2.svs")
    (folder / "loop2.svs").symlink_to(folder / "loop1.svs")
    (folder / "dir.svs").mkdir()  # a folder named like a slide: walked like any folder
    os.link(slide, folder / "dir.svs" / "nested.svs")
    return folder


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return histofast.synth.write_slide(tmp_path_factory.mktemp("s") / "s.svs", 1024, 1024, seed=4)


def test_tile_names_every_odd_entry_of_a_folder_and_tiles_the_rest(slide, tmp_path, capsys):
    folder = _odd_folder(tmp_path, slide)
    assert main(["tile", os.fspath(folder), "--out", os.fspath(tmp_path / "out"), "--tile-size", "256",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    for name, why in [("fifo.svs", "not a regular file"), ("broken.svs", "a broken symbolic link"),
                      ("loop1.svs", "a symbolic link loop")]:
        assert any(name in line and why in line for line in err.splitlines()), (name, err)
    assert (tmp_path / "out" / "good" / "manifest.csv").exists()
    assert (tmp_path / "out" / "nested" / "manifest.csv").exists()


def test_pipeline_names_the_real_reason(slide, tmp_path):
    os.mkfifo(tmp_path / "fifo.svs")
    with pytest.raises(histofast.HistofastError, match=r"not a regular file .*fifo\.svs"):
        histofast.TileDataset([slide, tmp_path / "fifo.svs"], 256, progress=False)
