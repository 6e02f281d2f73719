"""`histofast demo` writes into the user's cache folder (or --out), never into the current directory."""
from __future__ import annotations

import os

from histofast.cli import main


def test_demo_defaults_to_the_cache_folder_not_the_current_directory(tmp_path, monkeypatch, capsys):
    cwd, cache = tmp_path / "cwd", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(cache))
    assert main(["demo", "--size", "1024", "--quiet"]) == 0
    assert list(cwd.iterdir()) == []
    demo = cache / "histofast" / "demo"
    assert (demo / "synthetic-1024.svs").is_file()
    assert (demo / "tiles" / "manifest.csv").is_file() and (demo / "tiles" / "synthetic-1024" / "qc.png").is_file()
    assert f"QC image: {demo / 'tiles' / 'synthetic-1024' / 'qc.png'}" in capsys.readouterr().out
