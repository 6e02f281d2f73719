"""Bounded fuzz suite (issue 15): hostile inputs against every public API that opens a slide.

Each case (``corrupt.all_cases()``: corrupted bytes, truncations, tag surgery, odd TIFF formats, bombs,
non-slides) goes through ``open_slide``/``read_region`` ("read"), ``tile_grid`` ("grid"), ``iter_tiles``
("tiles"), ``export_slides`` with a good slide after it ("export") and, for a few, ``histofast tile`` ("cli").
Every call runs in a sandboxed child process (``fuzz_worker.Worker``) with a timeout. The contract, per call:
no crash, no hang, and either a clear error (a ``HistofastError``, or an OSError/ValueError naming the file) or
pixels equal to OpenSlide's (Pillow's for what OpenSlide does not open); ``export_slides`` and the CLI must
still finish the good slide completely.

The outcome table (input class × API) is printed by ``test_outcome_table`` (``pytest -s``, or on failure).
``HISTOFAST_FUZZ_N=k`` draws k times more random cases; ``HISTOFAST_FUZZ_SEED`` changes the draw.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from corrupt import Case, all_cases, build, write_svs
from fuzz_worker import TILE, Worker, env_for_subprocess

import histofast

API_TIMEOUT = 40.0
REFERENCE_TIMEOUT = 60.0
CLI_TIMEOUT = 90.0
APIS = ("read", "grid", "tiles", "export", "cli")
KINDS = ("error", "equal", "WRONG", "unclear", "crash", "hang")
BAD = {"WRONG", "unclear", "crash", "hang"}
# Cases whose failure is not histofast's, with why (xfail, strict=False): keep them visible in the table.
KNOWN: dict[str, str] = {
    "tag-svs-zero-bytecount": "OpenSlide's Aperio reader itself draws level-1 tile 0 transparent when a level-0 tile "
                              "has bytecount 0; histofast returns the stored level-1 pixels (tifffile's)",
}

CASES = all_cases()
TABLE: Counter[tuple[str, str, str]] = Counter()
FAILURES: dict[str, dict[str, Outcome]] = {}
_REFERENCES: dict[tuple[str, ...], tuple[Any, str]] = {}  # one case's reference reads (cleared per case)


@dataclass(frozen=True)
class Outcome:
    kind: str  # one of KINDS
    detail: str = ""


def _reason(case: Case) -> str | None:
    """Why ``case`` may fail without histofast being wrong, or None."""
    if case.name in KNOWN:
        return KNOWN[case.name]
    if case.cls == "corrupt tile data (JPEG)" and not histofast.ops.STRICT_JPEG:  # repaired pixels, not OpenSlide's
        return f"JPEG tiles decode through {histofast.build_info()['jpeg']}"
    return None


EXCUSED = {case.name: reason for case in CASES if (reason := _reason(case))}


def _params() -> list[Any]:
    return [pytest.param(case, id=case.name,
                         marks=[pytest.mark.xfail(reason=EXCUSED[case.name], strict=False)] if case.name in EXCUSED
                         else [])
            for case in CASES]


# -- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@dataclass
class Good:
    """The valid slide exported after each hostile one, and its expected tiles (from the reference reader)."""

    path: Path
    tiles: dict[tuple[int, int], np.ndarray]


@pytest.fixture(scope="module")
def good(folder: Path, worker: Worker) -> Good:
    path = write_svs(folder / "good.svs")
    status, grid = worker.call("ref_grid", os.fspath(path), timeout=REFERENCE_TIMEOUT)
    assert status == "ok", grid
    coords = _kept_coords(grid["white_ratio"])
    status, ref = worker.call("ref_tiles", os.fspath(path), coords, timeout=REFERENCE_TIMEOUT)
    assert status == "ok", ref
    return Good(path, {(int(x), int(y)): t for (x, y), t in zip(coords, ref["images"])})


# -- judging one call ------------------------------------------------------------------------------------------
def _kept_coords(white_ratio: np.ndarray, max_white: float = 0.5) -> np.ndarray:
    rows, cols = np.nonzero(white_ratio <= max_white)
    return np.stack([cols * TILE, rows * TILE], -1).astype(np.int64)


def _raised(info: dict[str, Any], path: Path) -> Outcome:
    """A clear error is a HistofastError, or an OSError/ValueError whose message names the file."""
    message = info["message"]
    named = os.fspath(path) in message or path.name in message
    what = f"{info['type']}: {message[:300]}"
    if info["histofast"] or (info["os_or_value"] and named):
        return Outcome("error", what)
    return Outcome("unclear", what)


def _failed_call(reply: tuple[str, Any], path: Path) -> Outcome | None:
    """The outcome of a call that did not return normally; None when it did."""
    status, value = reply
    if status == "crash":
        return Outcome("crash", f"worker exit code {value}")
    if status == "hang":
        return Outcome("hang", f"no answer in {value:g} s")
    if status == "raised":
        return _raised(value, path)
    return None


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape} vs reference {b.shape}"
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return f"{int((d > 0).any(-1).sum()) if d.ndim == 3 else int((d > 0).sum())} pixels differ (max {int(d.max())})"


def _reference(worker: Worker, task: str, path: Path, *args: Any) -> tuple[dict[str, Any] | None, str]:
    """A reference task's value, or None and why it failed (cached for the current case)."""
    key = (task, os.fspath(path), *(np.asarray(a).tobytes().hex() for a in args))
    if key not in _REFERENCES:
        status, value = worker.call(task, os.fspath(path), *args, timeout=REFERENCE_TIMEOUT)
        if status == "ok":
            _REFERENCES[key] = value, ""
        elif status == "raised":
            _REFERENCES[key] = None, f"reference refuses: {value['type']}: {value['message'][:200]}"
        else:
            _REFERENCES[key] = None, f"reference {status}: {value}"
    return _REFERENCES[key]


def _tiles_equal(worker: Worker, path: Path, coords: np.ndarray, images: Any) -> Outcome:
    if len(coords) == 0:
        return Outcome("equal")
    ref, why = _reference(worker, "ref_tiles", path, coords)
    if ref is None:
        return Outcome("WRONG", f"returned tiles, {why}")
    for (x, y), got, want in zip(coords, images, ref["images"]):
        if not np.array_equal(np.asarray(got), want):
            return Outcome("WRONG", f"tile ({x}, {y}): {_diff(np.asarray(got), want)}")
    return Outcome("equal")


def _grid_equal(worker: Worker, path: Path, white_ratio: np.ndarray) -> Outcome:
    ref, why = _reference(worker, "ref_grid", path)
    if ref is None:
        return Outcome("WRONG", f"returned a grid, {why}")
    if not np.array_equal(white_ratio, ref["white_ratio"]):
        return Outcome("WRONG", f"white_ratio {_diff(white_ratio, ref['white_ratio'])}")
    return Outcome("equal")


def _ask(worker: Worker, op: str, path: Path) -> tuple[Outcome | None, Any]:
    """``op`` on ``path`` in the worker: (the Outcome when the call failed, else None; the call's result)."""
    reply = worker.call(op, os.fspath(path), timeout=API_TIMEOUT)
    failed = _failed_call(reply, path)
    return failed, None if failed else reply[1]


def check_read(worker: Worker, path: Path) -> Outcome:
    failed, got = _ask(worker, "read", path)
    if failed:
        return failed
    ref, why = _reference(worker, "ref_read", path)
    if ref is None:
        return Outcome("WRONG", f"returned pixels, {why}")
    if got["dims"] != ref["dims"]:
        return Outcome("WRONG", f"level_dimensions {got['dims']} vs reference {ref['dims']}")
    for level, region in got["regions"].items():
        if not np.array_equal(region, ref["regions"][level]):
            return Outcome("WRONG", f"level {level}: {_diff(region, ref['regions'][level])}")
    return Outcome("equal")


def check_grid(worker: Worker, path: Path) -> Outcome:
    failed, got = _ask(worker, "grid", path)
    return failed or _grid_equal(worker, path, got["white_ratio"])


def check_tiles(worker: Worker, path: Path) -> Outcome:
    failed, got = _ask(worker, "tiles", path)
    if failed:
        return failed
    grid = _grid_equal(worker, path, got["white_ratio"])
    return grid if grid.kind != "equal" else _tiles_equal(worker, path, got["coords"], got["images"])


def _good_complete(good: Good, kept: int, coords: np.ndarray, images: list[np.ndarray]) -> str:
    """Why the good slide's export is incomplete or wrong; "" when it is right."""
    if kept != len(good.tiles):
        return f"good slide: {kept} tiles exported, {len(good.tiles)} expected"
    for (x, y), image in zip(coords, images):
        want = good.tiles.get((int(x), int(y)))
        if want is None or not np.array_equal(image, want):
            return f"good slide: tile ({x}, {y}) wrong"
    return ""


def check_export(worker: Worker, path: Path, good: Good, out: Path) -> Outcome:
    reply = worker.call("export", os.fspath(path), os.fspath(good.path), os.fspath(out), timeout=API_TIMEOUT)
    failed = _failed_call(reply, path)
    if failed:
        return Outcome("unclear" if failed.kind == "error" else failed.kind,
                       f"escaped export_slides (the good slide never ran): {failed.detail}")
    bad, ok = reply[1]["results"]
    if ok["status"] != "done" or not ok["files_exist"]:
        return Outcome("WRONG", f"good slide {ok['status']}: {ok['error']}")
    problem = _good_complete(good, ok["kept"], ok["coords"], ok["images"])
    if problem:
        return Outcome("WRONG", problem)
    if bad["status"] == "failed":
        return Outcome("error" if bad["error"] else "unclear", f"failed: {bad['error']}")
    if not bad["files_exist"]:
        return Outcome("WRONG", "manifest names missing tile files")
    grid, why = _reference(worker, "ref_grid", path)
    if grid is None:
        return Outcome("WRONG", f"exported {bad['kept']} tiles, {why}")
    expected = len(_kept_coords(grid["white_ratio"]))
    if bad["kept"] != expected:
        return Outcome("WRONG", f"exported {bad['kept']} tiles, reference keeps {expected}")
    return _tiles_equal(worker, path, bad["coords"], bad["images"])


def _manifest(directory: Path) -> list[dict[str, str]]:
    with open(directory / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_cli(worker: Worker, path: Path, good: Good, out: Path) -> Outcome:
    """``histofast tile BAD GOOD --format png``: exit 1 naming BAD with GOOD complete, or exit 0 with both right."""
    from PIL import Image

    command = [sys.executable, "-m", "histofast.cli", "tile", os.fspath(path), os.fspath(good.path), "--out",
               os.fspath(out), "--tile-size", str(TILE), "--format", "png", "--quiet"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env_for_subprocess())
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"no exit in {CLI_TIMEOUT:g} s")
    err = run.stderr.strip()
    if run.returncode < 0:
        return Outcome("crash", f"signal {-run.returncode}")
    if "Traceback" in err or run.returncode not in (0, 1):
        return Outcome("unclear", f"exit {run.returncode}: {err[-300:]}")
    good_dir = out / good.path.stem
    if not (good_dir / "manifest.csv").exists():
        return Outcome("WRONG", f"good slide not exported: {err[-300:]}")
    rows = _manifest(good_dir)
    coords = np.array([[int(r["x"]), int(r["y"])] for r in rows], np.int64).reshape(-1, 2)
    images = [np.asarray(Image.open(out / r["file"]).convert("RGB")) for r in rows]
    problem = _good_complete(good, len(rows), coords, images)
    if problem:
        return Outcome("WRONG", problem)
    if run.returncode == 1:
        named = path.name in err
        return Outcome("error" if named else "unclear", err[-300:])
    rows = _manifest(out / path.stem)
    coords = np.array([[int(r["x"]), int(r["y"])] for r in rows], np.int64).reshape(-1, 2)
    images = [np.asarray(Image.open(out / r["file"]).convert("RGB")) for r in rows]
    return _tiles_equal(worker, path, coords, images)


# -- the tests -------------------------------------------------------------------------------------------------
def _format_table(rows: Counter[tuple[str, str, str]]) -> str:
    classes = list(dict.fromkeys(c.cls for c in CASES))
    lines = [f"{'input class':34} {'API':7} " + " ".join(f"{k:>7}" for k in KINDS)]
    for cls in classes:
        for api in APIS:
            counts = [rows[cls, api, k] for k in KINDS]
            if any(counts):
                lines.append(f"{cls:34} {api:7} " + " ".join(f"{n:>7}" for n in counts))
    total = [sum(n for (_, _, k), n in rows.items() if k == kind) for kind in KINDS]
    lines.append(f"{'all':34} {'':7} " + " ".join(f"{n:>7}" for n in total))
    return "\n".join(lines)


def test_sandbox_reports_crash_and_hang(worker: Worker) -> None:
    """A dying or hanging call is an outcome, and the next call gets a fresh child."""
    assert worker.call("selftest", "abort", timeout=API_TIMEOUT) == ("crash", -6)
    assert worker.call("selftest", "hang", timeout=1.0) == ("hang", 1.0)
    assert worker.call("selftest", "nonsense-returns-after-sleep", timeout=0.5)[0] == "hang"


@pytest.mark.parametrize("case", _params())
def test_hostile_input(case: Case, folder: Path, worker: Worker, good: Good) -> None:
    _REFERENCES.clear()
    path = build(case, folder)
    outcomes = {"read": check_read(worker, path), "grid": check_grid(worker, path),
                "tiles": check_tiles(worker, path),
                "export": check_export(worker, path, good, folder / f"out-api-{case.name}")}
    if case.cli:
        outcomes["cli"] = check_cli(worker, path, good, folder / f"out-cli-{case.name}")
    for out in folder.glob(f"out-*-{case.name}"):
        shutil.rmtree(out, ignore_errors=True)
    if path.is_file():
        path.unlink()
    for api, outcome in outcomes.items():
        TABLE[case.cls, api, outcome.kind] += 1
    bad = {api: o for api, o in outcomes.items() if o.kind in BAD}
    if bad:
        FAILURES[case.name] = bad
    report = "\n".join(f"  {api:7} {o.kind:8} {o.detail}" for api, o in outcomes.items())
    print(f"\n{case.name} ({case.cls}):\n{report}")
    assert not bad, f"{case.name} ({case.cls}) breaks the contract:\n{report}"


def test_outcome_table() -> None:
    """Print the input class × API outcome table; fail on contract breaks outside the excused cases."""
    if not TABLE:
        pytest.skip("no fuzz case ran")
    table = _format_table(TABLE)
    print("\n" + table)
    unexpected = {name: bad for name, bad in FAILURES.items() if name not in EXCUSED}
    listing = "\n".join(f"  {name}: " + "; ".join(f"{api} {o.kind} ({o.detail})" for api, o in bad.items())
                        for name, bad in unexpected.items())
    assert not unexpected, f"contract breaks:\n{listing}\n\n{table}"
