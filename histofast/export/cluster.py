"""Exporting many slides on a Dask distributed cluster (the ``cluster`` extra: ``pip install histofast[cluster]``).

Each slide is one task, and the task is ``export_slide`` itself, run on a worker: the worker opens and decodes
its own slide (the paths must name storage every worker and the client share) and sends back only a
``SlideResult`` (counts, failure reason, optionally the manifest rows). Nothing is lost or written twice:

- a task whose worker dies is run again on another worker (the scheduler's ``allowed-failures``, default 3);
  an unexpected exception in a task is retried ``retries`` times; per-slide outputs are atomic and resumable
  (``export_slide``), so a retried slide keeps the tiles its first attempt finished and writes the rest, and
  the retry first removes the temporary files a killed attempt left in the slide's folder;
- ``OUT/manifest.csv`` is written once, by the client, at the end, from the per-slide manifests of every
  finished slide (``write_top_manifest``); a rerun after the client itself was killed skips finished slides
  and completes the others;
- a slide another run is exporting (its folder is locked: ``export.lock``) fails at once, untouched;
- a bad slide fails only itself: its reason comes back in its ``SlideResult``.

Larger slides (by file size) are submitted first and with a higher priority, so one big slide does not run
alone at the end. Each task decodes and encodes with ``cores // (Dask threads of the workers on its host)``
threads, so workers × threads = the cores of each machine. Splitting one giant slide into row ranges is not
done: a slide is the unit of work.

A Dask cluster runs pickled code sent to it: its scheduler must be reachable only by its users. The
``LocalCluster`` that ``local_cluster`` starts listens on 127.0.0.1 only (scheduler, workers, and its HTTP
server on a free port).
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..checks import check_count, check_device
from ..errors import HistofastError
from ..io.decode import check_decode
from ..renamed import renamed_keyword
from .settings import ExportOptions
from .slides import SlideResult, _writable, export_slide, failed, write_top_manifest
from .source import slide_ids

log = logging.getLogger(__name__)

MISSING = ("histofast's cluster mode needs Dask distributed: pip install 'histofast[cluster]' "
           "(or pip install 'dask[distributed]')")


def require_distributed() -> Any:
    """The ``distributed`` module, or a ``HistofastError`` naming the ``cluster`` extra when it is missing."""
    try:
        import distributed
    except ImportError:
        raise HistofastError(MISSING) from None
    return distributed


@contextlib.contextmanager
def local_cluster(processes: int) -> Iterator[Any]:
    """A ``distributed.Client`` on a ``LocalCluster`` of ``processes`` worker processes (one Dask thread each,
    so each runs one slide at a time with cores // processes decode/encode threads), listening on 127.0.0.1
    only (its HTTP server on a free port there); closed on exit."""
    check_count(processes, "processes")
    distributed = require_distributed()
    with distributed.LocalCluster(n_workers=processes, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@contextlib.contextmanager
def connect(address: str, *, timeout_s: float = 30.0) -> Iterator[Any]:
    """A ``distributed.Client`` connected to the running scheduler at ``address`` (``tcp://host:8786``,
    ``tls://host:8786``, …), with the user's Dask security settings (``distributed.Security()`` reads the
    certificates from the Dask config, ``distributed.comm.tls.*``); closed on exit. ``timeout_s``: seconds
    to wait for the scheduler."""
    distributed = require_distributed()
    security = distributed.Security()
    if address.startswith("tls://"):
        _check_tls(address, security)
    try:
        client = distributed.Client(address, security=security, timeout=timeout_s)
    except (OSError, TimeoutError) as e:
        raise HistofastError(f"--scheduler {address}: cannot connect ({e})") from None
    with client:
        yield client


# What a tls:// client needs, as (Dask config key, environment variable, Security attribute).
TLS_SETTINGS = (
    ("distributed.comm.tls.ca-file", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "tls_ca_file"),
    ("distributed.comm.tls.client.cert", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", "tls_client_cert"),
    ("distributed.comm.tls.client.key", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY", "tls_client_key"),
)


def _check_tls(address: str, security: Any) -> None:
    """Raise a ``HistofastError`` naming the Dask config keys (and environment variables) of the certificates a
    ``tls://`` client lacks (Dask itself fails with a ``TypeError`` about an ``ssl_context``). The client key may
    be inside the certificate file, so it is named only with a missing certificate."""
    if security.tls_ca_file and security.tls_client_cert:
        return
    missing = [f"{key} (or ${env})" for key, env, attribute in TLS_SETTINGS if not getattr(security, attribute)]
    raise HistofastError(f"--scheduler {address}: a tls:// scheduler needs TLS certificates, and the Dask config has "
                         f"no {', '.join(missing)}: set them in ~/.config/dask/*.yaml or the environment")


def export_slides_distributed(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, options: ExportOptions, client: Any, *,
    threads: int | None = None, qc: bool = False, progress: bool | None = None, device: str = "cpu",
    decode: str = "auto", retries: int = 2, rows: bool = True, **deprecated: Any,
) -> list[SlideResult]:
    """``export_slides`` on the workers of a ``distributed.Client``: one task per slide (``export_slide`` on a
    worker), results in the order of ``paths``; one failing slide is reported and the others still finish.

    ``threads``: decode/encode threads per task (default: the cores of the worker's machine divided by the Dask
    threads of the workers on it; ``workers=``, its 0.x name, still works for this release with a
    ``FutureWarning``). ``retries``: how many times a task that raised an unexpected exception is run
    again (a slide's own errors, ``HistofastError`` and ``OSError``, fail it at once, as in one process; a dead
    worker's tasks are rerun by the scheduler). ``rows``: send each slide's manifest rows back in its
    ``SlideResult`` (False keeps the client's memory small on large archives: ``OUT/manifest.csv`` is written
    from the per-slide manifests either way). ``progress``: one tqdm bar over slides with kept tiles/s
    (None: only on a terminal).

    Slide paths and ``out_dir`` are made absolute before they travel (workers run in other folders), so the
    manifests' ``slide`` column holds absolute paths. Writes ``out_dir/manifest.csv`` once, at the end
    (``write_top_manifest``: every finished slide in ``out_dir``)."""
    from tqdm.auto import tqdm

    threads = renamed_keyword(deprecated, "export_slides_distributed", "workers", "threads", threads)
    if deprecated:
        raise TypeError("export_slides_distributed() got unexpected keyword arguments: "
                        f"{', '.join(sorted(deprecated))}")
    distributed = require_distributed()
    check_decode(decode, check_device(device))  # checked here, resolved on each worker (its own current GPU)
    if threads is not None:
        check_count(threads, "threads")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise HistofastError(f"retries={retries!r}: must be an integer >= 0")
    out = Path(os.path.abspath(out_dir))  # workers elsewhere run in other folders: absolute paths travel
    ids = slide_ids(paths)  # from the paths as given: the same folders as export_slides
    paths = [os.path.abspath(p) for p in paths]
    _writable(out)
    hosts = _threads_per_host(client)
    order = sorted(range(len(paths)), key=lambda i: -_size(paths[i]))  # largest file first
    futures: dict[Any, int] = {}
    token = secrets.token_hex(4)
    for rank, i in enumerate(order):
        future = client.submit(
            _task, os.fspath(paths[i]), os.fspath(out), options, ids[i], threads, hosts, qc, device, decode, rows,
            key=f"histofast-tile-{token}-{i:06d}-{ids[i]}", pure=False, retries=retries, priority=len(order) - rank)
        futures[future] = i
    results: list[SlideResult | None] = [None] * len(paths)
    kept = 0
    start = time.perf_counter()
    disable = None if progress is None else not progress
    try:
        with tqdm(total=len(paths), desc="slides", unit="slide", disable=disable) as bar:
            for future in distributed.as_completed(list(futures)):
                i = futures[future]
                results[i] = _result(future, paths[i], distributed)
                kept += results[i].kept if results[i].status == "done" else 0
                bar.set_postfix_str(f"{kept / max(time.perf_counter() - start, 1e-9):,.0f} kept tiles/s",
                                    refresh=False)
                bar.update(1)
                future.release()
    except BaseException:
        client.cancel(list(futures))
        raise
    write_top_manifest(out)
    return [r for r in results if r is not None]


def _task(path: str, out_dir: str, options: ExportOptions, slide_id: str, threads: int | None,
          hosts: dict[str, int], qc: bool, device: str, decode: str, rows: bool) -> SlideResult:
    """One slide on a worker: ``export_slide`` (which first clears its folder of a killed attempt's temporary
    files)."""
    if threads is None:
        threads = _threads_here(hosts)
    try:
        result = export_slide(path, out_dir, options, slide_id=slide_id, threads=threads, qc=qc, device=device,
                              decode=decode)
    except (HistofastError, OSError) as e:  # the slide's own errors; any other is retried, then failed by _result
        return failed(path, e)
    if not rows:
        result.rows = []
    return result


def _result(future: Any, path: str | os.PathLike, distributed: Any) -> SlideResult:
    """The task's ``SlideResult``, or a failed one saying why the task itself failed."""
    try:
        return future.result()
    except distributed.KilledWorker:
        reason = "the workers running it died too often (distributed.scheduler.allowed-failures)"
    except Exception as e:  # an unexpected error, after its retries: fail this slide, keep the others
        return failed(path, e)
    log.info("%s: failed: %s", path, reason)  # the result carries the reason: callers report it (once)
    return SlideResult(os.fspath(path), "failed", error=reason)


def _threads_per_host(client: Any) -> dict[str, int]:
    """Dask threads of the workers on each host, from the scheduler (workers that join later are not counted)."""
    counts: Counter[str] = Counter()
    for info in scheduler_workers(client).values():
        counts[info.get("host", "")] += int(info.get("nthreads", 1))
    return dict(counts)


def scheduler_workers(client: Any) -> dict[str, dict[str, Any]]:
    """Every worker the scheduler knows, by address (``scheduler_info`` lists only 5 unless asked for all)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025: no n_workers argument, every worker listed
        return client.scheduler_info()["workers"]


def _threads_here(hosts: dict[str, int]) -> int:
    """Decode/encode threads for a task on this worker: this machine's cores over the Dask threads on it."""
    from distributed import get_worker

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    worker = get_worker()
    host = worker.address.rsplit("://", 1)[-1].rsplit(":", 1)[0]
    return max(1, cores // max(hosts.get(host, 0), worker.state.nthreads, 1))


def _size(path: str | os.PathLike) -> int:
    """A slide's file size in bytes (0 when it cannot be read: the task will say why)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
