"""`histofast tile` on Dask distributed (histofast.export.cluster): a LocalCluster of worker processes writes
exactly what one process writes; a killed worker or a killed client loses nothing and duplicates nothing;
tls:// works with the Dask config's certificates. Every wait is bounded (SIGALRM per test, timeouts on joins)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import histofast
from histofast import HistofastError
from histofast.cli import main
from histofast.export import ExportOptions, export_slides

distributed = pytest.importorskip("distributed")

from histofast.export.cluster import export_slides_distributed, local_cluster, require_distributed  # noqa: E402

TILE = 256
ARGS = ["--tile-size", str(TILE), "--format", "png", "--quiet"]
GOOD = 5


@pytest.fixture(autouse=True)
def _time_limit():
    """Fail a test that runs past 60 s instead of hanging CI."""
    def expired(*_):
        raise TimeoutError("test_cluster: a test ran past its 60 s limit")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """Five generated slides of different sizes (about 1 s each on one core) and one that is not a slide."""
    folder = tmp_path_factory.mktemp("cluster-slides")
    for k in range(GOOD):
        histofast.synth.write_slide(folder / f"s{k}.svs", 2400 + 400 * k, 2600, seed=k, tissue_fraction=0.5,
                                    min_level_size=256)
    (folder / "bad.svs").write_text("not a slide")
    return folder


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory) -> Path:
    """The same slides tiled in one process (today's path)."""
    out = tmp_path_factory.mktemp("one-process")
    assert main(["tile", os.fspath(slides), "--out", os.fspath(out)] + ARGS) == 1
    return out


def _manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tiles(out: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.png")}


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _same_as_reference(out: Path, reference: Path) -> None:
    """Every kept tile exactly once: the top manifest and the PNG files equal the one-process run's."""
    rows = _manifest(out / "manifest.csv")
    assert rows == _manifest(reference / "manifest.csv")
    assert len({(r["slide"], r["x"], r["y"]) for r in rows}) == len(rows) > 0
    assert _tiles(out) == _tiles(reference)
    assert not _leftovers(out)


def test_two_worker_processes_write_what_one_process_writes(slides, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tile", os.fspath(slides), "--out", os.fspath(out), "--processes", "2"] + ARGS) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "bad.svs" in captured.err
    assert f"{GOOD} slides tiled, 0 already done, 1 failed" in captured.out and "on 2 Dask workers" in captured.out
    _same_as_reference(out, reference)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"s{k}" for k in range(GOOD)]


def _processing_worker(client, out: Path) -> str | None:
    """The address of a worker running a slide that has started writing tiles, if any."""
    for address, keys in client.processing().items():
        for key in keys:
            folder = str(key).split("-", 4)[-1]  # histofast-tile-TOKEN-INDEX-SLIDE_ID
            if _written_tiles(out / folder):
                return address
    return None


def _written_tiles(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.suffix == ".png")
    except FileNotFoundError:
        return 0


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(slides, reference, tmp_path):
    out = tmp_path / "out"
    paths = sorted(os.fspath(p) for p in slides.iterdir())
    with local_cluster(2) as client:
        pids = client.run(os.getpid)
        box: dict = {}
        worker = threading.Thread(target=lambda: box.update(results=export_slides_distributed(
            paths, out, ExportOptions(TILE, format="png"), client, progress=False)), daemon=True)
        worker.start()
        deadline = time.monotonic() + 30
        victim = None
        while victim is None and worker.is_alive() and time.monotonic() < deadline:
            victim = _processing_worker(client, out)
            time.sleep(0.02)
        assert victim is not None, "no worker was seen mid-slide"
        os.kill(pids[victim], signal.SIGKILL)
        worker.join(timeout=45)
        assert not worker.is_alive()
    results = box["results"]
    assert [r.status for r in results].count("done") == GOOD
    [bad] = [r for r in results if r.status == "failed"]
    assert bad.slide.endswith("bad.svs") and "not a slide" in bad.error
    _same_as_reference(out, reference)


def test_a_killed_client_then_a_rerun_completes_without_duplicates(slides, reference, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "histofast.cli", "tile", os.fspath(slides), "--out", os.fspath(out),
            "--processes", "2"] + ARGS
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while client.poll() is None and time.monotonic() < deadline:
            if any((out / f"s{k}" / "manifest.csv").exists() for k in range(GOOD)):
                break
            time.sleep(0.02)
        assert client.poll() is None, "the run ended before it could be killed"
        client.kill()  # the client alone: its LocalCluster's processes must end by themselves
        client.wait(timeout=10)
        done = sum((out / f"s{k}" / "manifest.csv").exists() for k in range(GOOD))
        assert 0 < done < GOOD
        gone = time.monotonic() + 15
        while _group_alive(client.pid) and time.monotonic() < gone:
            time.sleep(0.1)
        assert not _group_alive(client.pid), "worker processes outlived the killed client"
    finally:
        if _group_alive(client.pid):
            os.killpg(client.pid, signal.SIGKILL)
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=45)
    assert rerun.returncode == 1, rerun.stderr
    assert f"{GOOD - done} slides tiled, {done} already done, 1 failed" in rerun.stdout
    _same_as_reference(out, reference)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tls_scheduler_with_certificates_from_the_dask_config(slides, reference, tmp_path, capsys):
    import dask

    security = distributed.Security.temporary()
    pem = tmp_path / "pem"
    pem.mkdir(mode=0o700)
    for name, text in (("ca.pem", security.tls_ca_file), ("cert.pem", security.tls_client_cert),
                       ("key.pem", security.tls_client_key)):
        (pem / name).write_text(text)
    config = {"distributed.comm.tls.ca-file": os.fspath(pem / "ca.pem"),
              "distributed.comm.tls.client.cert": os.fspath(pem / "cert.pem"),
              "distributed.comm.tls.client.key": os.fspath(pem / "key.pem"),
              "distributed.comm.require-encryption": True}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tls://",
                                  host="127.0.0.1", security=security, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        out = tmp_path / "out"
        with dask.config.set(config):
            status = main(["tile", os.fspath(slides), "--out", os.fspath(out), "--scheduler", address] + ARGS)
        assert status == 1 and "on 1 Dask workers (tls://" in capsys.readouterr().out
        _same_as_reference(out, reference)
        with pytest.raises((OSError, TimeoutError)):  # and without the certificates, no way in
            distributed.Client(address.replace("tls://", "tcp://"), timeout=2)


def test_tls_scheduler_without_certificates_names_what_is_missing(slides, tmp_path, capsys):
    import dask

    unset = {"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None,
             "distributed.comm.tls.client.key": None}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://",
                                  host="127.0.0.1", security=distributed.Security.temporary(),
                                  dashboard_address=None) as cluster, dask.config.set(unset):
        address = cluster.scheduler_address
        out = tmp_path / "out"
        assert main(["tile", os.fspath(slides / "s0.svs"), "--out", os.fspath(out), "--scheduler", address]
                    + ARGS) == 2
    err = capsys.readouterr().err
    assert f"--scheduler {address}: a tls:// scheduler needs TLS certificates" in err
    for name in ("distributed.comm.tls.ca-file", "distributed.comm.tls.client.cert", "distributed.comm.tls.client.key",
                 "DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"):
        assert name in err
    assert not out.exists()


def test_python_api_with_a_client_returns_rows_like_export_slides(slides, tmp_path):
    paths = [slides / "s0.svs", slides / "bad.svs"]
    one = export_slides(paths, tmp_path / "one", ExportOptions(TILE, format="none"), progress=False)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        many = export_slides_distributed(paths, tmp_path / "many", ExportOptions(TILE, format="none"), client,
                                         progress=False, retries=0)
    assert [(r.status, r.kept, r.total, r.rows) for r in many] == [(r.status, r.kept, r.total, r.rows) for r in one]
    with pytest.raises(HistofastError, match="retries=-1"):
        export_slides_distributed(paths, tmp_path, ExportOptions(TILE), client=None, retries=-1)


def test_missing_dask_names_the_extra(monkeypatch, capsys, slides, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(HistofastError, match=r"histofast\[cluster\]"):
        require_distributed()
    assert main(["tile", os.fspath(slides / "s0.svs"), "--out", os.fspath(tmp_path), "--processes", "2"]) == 2
    assert "pip install 'histofast[cluster]'" in capsys.readouterr().err
