"""The README's Python snippets run as written, each after the ones above it, in a fresh folder (they
generate their own slides and datasets), so what a new user pastes keeps working."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_readme_python_snippets_run_in_order(tmp_path, monkeypatch):
    blocks = snippets()
    assert len(blocks) >= 6  # data, tiling, ops, Pipeline, TileDataset, fit/evaluate
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for k, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {k + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README python block {k + 1} fails:\n{block}") from e
    # What the snippets promise they made.
    assert (tmp_path / "case.grid.csv").is_file() and (tmp_path / "runs" / "simple" / "last.pt").is_file()
    assert len(namespace["origins"]) > 0 and namespace["grid"].tile_size == 512
    assert namespace["evaluation"].reports
