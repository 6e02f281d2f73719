"""The Pipeline across processes, with the real clients: 2 ranks under ``torchrun`` (gloo, CPU) with a
DistributedDataParallel step per batch, Lightning ``Trainer(strategy="ddp" | "ddp_spawn")`` with a Pipeline
built without ``shard=``, ``DataLoader(TileDataset)`` workers (persistent or not) under Lightning, and the
README's torchrun and Lightning recipes run as written. Then the conventions: unlabelled = −100
(``cross_entropy``'s ``ignore_index``), the error for a DataLoader that batches batches again, the ``"eval"``
preset, automatic epochs, decode threads per rank.

Dataset sizes are chosen for the two ways shards used to go uneven at batch 64 over 2 ranks: 385 kept tiles
(shares 192/193: 3 vs 4 batches without ``drop_last``) and 383 (191/192: 2 vs 3 batches with it).
32-pixel tiles at stride 32 with ``max_white=1`` keep every grid cell, so the counts follow from the slide sizes.

Every subprocess runs under a deadline (a faulthandler watchdog in each rank, a gloo collective timeout, and
a kill of the whole process group here), so a hang fails the test instead of the CI job."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import histofast as hf  # noqa: E402
from histofast.data.dataset import TileDataset  # noqa: E402
from histofast.data.sources import NO_LABEL  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent / "dist_scripts"
ROOT = Path(hf.__file__).resolve().parents[1]  # the histofast the subprocesses import: this one
README = ROOT / "README.md"
TILE, BATCH = 32, 64
SIZES = {  # slide (width, height) per dataset; kept tiles = Σ (W // 32) · (H // 32). Each slide is one block
    # (``samples.BLOCK_PIXELS``), the unit the shuffle permutes: several, so ranks on different epochs disagree.
    385: [(352, 224)] * 5,  # 5 × 77
    383: [(352, 224)] * 4 + [(480, 160)],  # 4 × 77 + 75
    432: [(384, 384)] * 3,  # 3 × 144: the middle slide is truncated after scoring
}
OPTIONS = dict(tile_size=TILE, stride=TILE, max_white=1.0, batch_size=BATCH, lanes=2)
DEADLINE_S = 100  # a rank still running after this prints its stacks and exits
TIMEOUT_S = 150  # then the whole process group is killed


@pytest.fixture(scope="module")
def datasets(make_slide):
    """count → slide paths (generated once per session)."""
    return {n: [make_slide(w, h, seed=40 + n % 7 + k) for k, (w, h) in enumerate(sizes)]
            for n, sizes in SIZES.items()}


def _labels(paths) -> list[str]:
    return ["ADC" if k % 2 else "NORM" for k in range(len(paths))]


def _expected(n: int) -> set[tuple[int, int, int]]:
    """Every grid cell of dataset ``n`` as (slide, x, y), from the grid rule alone."""
    return {(i, x, y) for i, (w, h) in enumerate(SIZES[n])
            for y in range(0, h - TILE + 1, TILE) for x in range(0, w - TILE + 1, TILE)}


def _rows(batch) -> list[list[int]]:
    return [list(r) for r in zip(*(batch[k].tolist() for k in ("slide", "x", "y", "label")))]


def check_epoch(ranks: list[list[list[list[int]]]], expected: set, lengths: list[int], *, drop_last: bool,
                failed: set[int] = frozenset()) -> None:
    """One epoch over all ranks (per rank its batches, a batch its [slide, x, y, label] rows): equal steps
    and the coverage rules. ``failed``: slides that failed mid-epoch (their tiles may be missing)."""
    world, n = len(ranks), len(expected)
    assert len(set(lengths)) == 1, f"len(pipe) differs between ranks: {lengths}"
    assert [len(r) for r in ranks] == lengths, f"batches per rank {[len(r) for r in ranks]} vs len(pipe) {lengths}"
    sizes = [[len(b) for b in r] for r in ranks]
    assert all(s == sizes[0] for s in sizes), f"batch sizes differ between ranks: {sizes}"
    share = n // world if drop_last else -(-n // world)
    whole, rest = divmod(share, BATCH)
    assert sizes[0] == [BATCH] * whole + ([rest] if rest and not drop_last else []), sizes[0]
    real: Counter = Counter()
    pads = 0
    for r, batches in enumerate(ranks):
        rows = [tuple(row) for b in batches for row in b]
        own = {row[:3] for row in rows if row[3] != NO_LABEL}
        repeats = [row[:3] for row in rows if row[3] == NO_LABEL]
        if failed:  # stand-ins for a failed slide's samples: cut by this lane before, else other slides' first
            bad = {k for k in repeats if k[0] in failed or k not in expected}
            assert not bad, f"rank {r} repeats tiles of the failed slide: {sorted(bad)[:5]}"
        else:  # a short share repeats its own samples
            assert set(repeats) <= own, f"rank {r} repeats samples it did not cut: {sorted(set(repeats) - own)[:5]}"
        real.update(row[:3] for row in rows if row[3] != NO_LABEL)
        pads += len(repeats)
    twice = [k for k, c in real.items() if c > 1]
    assert not twice, f"{len(twice)} tiles appear more than once with a label, e.g. {twice[:5]}"
    assert set(real) <= expected, f"unknown tiles: {sorted(set(real) - expected)[:5]}"
    if failed:
        if not drop_last:
            missing = {k for k in expected - set(real) if k[0] not in failed}
            assert not missing, f"{len(missing)} tiles of healthy slides missing, e.g. {sorted(missing)[:5]}"
    elif drop_last:
        assert pads == 0 and len(real) == world * whole * BATCH
    else:
        assert set(real) == expected, f"{len(expected - set(real))} kept tiles missing"
        assert pads == world * share - n


def _epoch(it) -> list[dict]:
    return [{k: v.clone() for k, v in b.items()} for b in it]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------- one process


@pytest.mark.parametrize("n", [385, 383])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_explicit_shards_give_equal_steps(datasets, n, world, drop_last):
    paths = datasets[n]
    ranks, lengths = [], []
    for rank in range(world):
        ds = TileDataset(paths, labels=_labels(paths), shard=(rank, world), drop_last=drop_last, progress=False,
                         **OPTIONS)
        assert ds.shard == (rank, world)
        lengths.append(len(ds))
        ranks.append([_rows(b) for b in ds])
    check_epoch(ranks, _expected(n), lengths, drop_last=drop_last)


@pytest.mark.parametrize("drop_last", [False, True])
def test_slide_failing_mid_epoch_keeps_steps_equal(datasets, tmp_path, caplog, drop_last):
    paths = [os.fspath(shutil.copy(p, tmp_path / f"{k}.svs")) for k, p in enumerate(datasets[432])]
    shards = [TileDataset(paths, labels=_labels(paths), shard=(r, 2), shuffle=False, drop_last=drop_last,
                          progress=False, **OPTIONS) for r in range(2)]
    lengths = [len(ds) for ds in shards]
    os.truncate(paths[1], 20000)  # scored fine, then damaged: its tiles can no longer be decoded
    with caplog.at_level(logging.WARNING, logger="histofast"):
        ranks = [[_rows(b) for b in ds] for ds in shards]
    check_epoch(ranks, _expected(432), lengths, drop_last=drop_last, failed={1})
    assert all(paths[1] in ds.failed for ds in shards)  # both ranks' shares held some of it
    assert "1.svs" in caplog.text
    assert [len(ds) for ds in shards] == lengths


def test_shard_defaults_to_one_process_without_a_process_group(datasets):
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    paths = datasets[385]
    pipe = hf.Pipeline(paths, labels=_labels(paths), backend="torch", progress=False, **OPTIONS)
    assert pipe.shard == (0, 1) and len(pipe) == -(-385 // BATCH)
    assert sum(len(b["x"]) for b in pipe) == 385


def test_no_batch_holds_only_repeats(datasets):
    """A batch of repeats only (every label −100) would make ``cross_entropy``'s default mean 0/0 = NaN, which
    DDP then spreads to every rank's weights. Dataset 385 over 2 ranks, unshuffled: rank 0 has 192 tiles and
    one repeat, 193 samples = 3 batches of 64 and a batch of 1; the repeats come first, so that batch is real."""
    paths = datasets[385]
    for shuffle in (False, True):
        for rank in range(2):
            ds = TileDataset(paths, labels=_labels(paths), shard=(rank, 2), shuffle=shuffle, progress=False,
                             **OPTIONS)
            for k, b in enumerate(ds):
                loss = torch.nn.functional.cross_entropy(torch.zeros(len(b["label"]), 2), b["label"])
                assert torch.isfinite(loss), (f"shuffle={shuffle} rank {rank}: batch {k} of {len(ds)} holds "
                                              f"only repeats (labels {b['label'].tolist()})")


def test_each_iteration_is_the_next_epoch(datasets):
    paths = datasets[385]

    def reference(epoch):
        ds = TileDataset(paths, labels=_labels(paths), progress=False, **OPTIONS)
        ds.set_epoch(epoch)
        return _epoch(ds)

    ref = {e: reference(e) for e in (0, 1, 5, 6)}
    assert not _same(ref[0], ref[1])
    ds = TileDataset(paths, labels=_labels(paths), progress=False, **OPTIONS)
    pipe = hf.Pipeline(paths, labels=_labels(paths), backend="torch", progress=False, **OPTIONS)
    for it in (ds, pipe):
        assert _same(_epoch(it), ref[0]) and _same(_epoch(it), ref[1])
        it.set_epoch(5)  # then 5, 6, ...
        assert _same(_epoch(it), ref[5]) and _same(_epoch(it), ref[6])


@pytest.mark.parametrize("persistent", [False, True])
def test_each_iteration_is_the_next_epoch_in_dataloader_workers(datasets, persistent):
    paths = datasets[383]
    options = {**OPTIONS, "dtype": "uint8"}

    def reference(epoch):
        ds = TileDataset(paths, labels=_labels(paths), progress=False, **options)
        ds.set_epoch(epoch)
        return _epoch(ds)

    ds = TileDataset(paths, labels=_labels(paths), progress=False, **options)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=persistent)
    got = [_epoch(loader), _epoch(loader)]
    ds.set_epoch(7)
    got += [_epoch(loader), _epoch(loader)]
    for epoch, batches in zip((0, 1, 7, 8), got):
        assert _same(batches, reference(epoch)), f"iteration of epoch {epoch} (persistent={persistent})"


def test_unlabelled_samples_are_ignored_by_cross_entropy(datasets):
    assert NO_LABEL == -100 == torch.nn.CrossEntropyLoss().ignore_index
    paths = datasets[385]
    ds = TileDataset(paths, labels=["ADC"] + [None] * (len(paths) - 1), shuffle=False, augment=None, progress=False,
                     **OPTIONS)
    seen = set()
    for b in ds:
        label = b["label"]
        assert ((label == NO_LABEL) == (b["slide"] != 0)).all()
        seen.update(label.tolist())
        logits = torch.randn(len(label), 2)
        loss = torch.nn.functional.cross_entropy(logits, label)  # was an IndexError with −1
        kept = label != NO_LABEL
        if kept.any():
            assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits[kept], label[kept]))
    assert seen == {0, NO_LABEL}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_dataloader_batching_batches_again_is_refused(datasets, num_workers):
    paths = datasets[385]
    ds = TileDataset(paths, labels=_labels(paths), progress=False, **OPTIONS)
    it = iter(torch.utils.data.DataLoader(ds, num_workers=num_workers))  # batch_size=1 by default
    try:
        with pytest.raises(hf.HistofastError, match="batch_size=None"):
            next(it)
    finally:
        # Now: left to the garbage collector, a loader whose worker raised waits 5 s per worker to stop.
        getattr(it, "_shutdown_workers", lambda: None)()


def test_eval_preset_neither_shuffles_nor_augments(datasets):
    paths = datasets[385]
    plain = _epoch(TileDataset(paths, labels=_labels(paths), shuffle=False, augment=None, progress=False, **OPTIONS))
    for it in (TileDataset(paths, labels=_labels(paths), preset="eval", progress=False, **OPTIONS),
               hf.Pipeline(paths, labels=_labels(paths), preset="eval", backend="torch", progress=False, **OPTIONS)):
        first, second = _epoch(it), _epoch(it)
        assert _same(first, plain) and _same(second, plain)
    # Given explicitly, they still apply.
    shuffled = TileDataset(paths, labels=_labels(paths), preset="eval", shuffle=True, progress=False, **OPTIONS)
    a, b = _epoch(shuffled), _epoch(shuffled)
    assert [r[:3] for x in a for r in _rows(x)] != [r[:3] for x in b for r in _rows(x)]
    augmented = TileDataset(paths, labels=_labels(paths), preset="eval", augment=hf.Augment(rot90=True, seed=1),
                            progress=False, **OPTIONS)
    got = _epoch(augmented)
    assert [_rows(x) for x in got] == [_rows(x) for x in plain]
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(got, plain))
    assert TileDataset(paths, labels=_labels(paths), progress=False, **OPTIONS).shuffle  # preset="train"


def test_decode_threads_share_the_node_between_its_ranks(datasets, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    made = []
    init = ThreadPoolExecutor.__init__

    def spy(self, max_workers=None, thread_name_prefix="", *args, **kwargs):
        if thread_name_prefix.startswith("histofast-decode"):
            made.append(max_workers)
        init(self, max_workers, thread_name_prefix, *args, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "__init__", spy)
    paths = datasets[385]
    ds = TileDataset(paths, labels=_labels(paths), progress=False, **OPTIONS)
    made.clear()  # scoring's own pools
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    next(iter(ds))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    next(iter(ds))
    cores = {os.cpu_count() or 1}
    if hasattr(os, "sched_getaffinity"):
        cores.add(len(os.sched_getaffinity(0)))
    assert len(made) == 2
    assert any(made == [max(1, c), max(1, c // 2)] for c in cores), f"decode threads {made}, cores {cores}"


# ---------------------------------------------------------------------------------------- subprocesses


def _run(cmd: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    """Run ``cmd`` in ``cwd`` (a fresh temporary folder that every command line names) in a process group of
    its own, output to a file; past ``timeout`` kill it and every process naming ``cwd`` (torchrun puts its
    ranks in sessions of their own), then fail."""
    log = cwd / "output.txt"
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, cwd)
            pytest.fail(f"{' '.join(map(str, cmd))} still running after {timeout} s (killed):\n"
                        f"{log.read_text()[-6000:]}")
    return rc, log.read_text()


def _kill(proc: subprocess.Popen, cwd: Path) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    mark = os.fsencode(cwd)
    for entry in Path("/proc").glob("[0-9]*"):
        try:  # only processes whose command line names our temporary folder: ones this test started
            if mark in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    proc.wait()


def _no_len_warning(text: str) -> None:
    """No warning about an ``IterableDataset``'s ``__len__`` in ``text`` (output, or a JSON list of warnings)."""
    lines = json.loads(text) if text.startswith("[") else text.splitlines()
    bad = [line for line in lines if "__len__" in line or "IterableDataset" in line]
    assert not bad, "Lightning warned about the dataset's length:\n" + "\n".join(bad)


def _reference(paths, shard: tuple[int, int], epoch: int, **options) -> list[list[list[int]]]:
    """The rows of ``epoch`` for ``shard``, from a TileDataset in this process (2 lanes, as the runs use)."""
    ds = TileDataset(paths, labels=_labels(paths), shard=shard, progress=False, **{**OPTIONS, **options})
    ds.set_epoch(epoch)
    return [_rows(b) for b in ds]


# torchrun scenarios: name → (dataset, Pipeline options beyond OPTIONS, DataLoader arguments or None).
TORCHRUN = {
    **{f"{n}-drop{int(d)}": (n, {"drop_last": d, "backend": "torch"}, None) for n in (385, 383) for d in (False, True)},
    "385-auto": (385, {}, None),  # backend="auto": DALI where installed
    # DataLoader(TileDataset) workers: forked ones see the process group, spawned ones inherit the shard.
    "385-loader-fork": (385, {}, {"num_workers": 2, "persistent_workers": True}),
    "385-loader-spawn": (385, {}, {"num_workers": 2, "persistent_workers": True, "multiprocessing_context": "spawn"}),
    # Unshuffled: both ranks' shares hold part of the middle slide, truncated once both have scored it.
    **{f"432-truncated-drop{int(d)}": (432, {"drop_last": d, "shuffle": False, "backend": "torch"}, None)
       for d in (False, True)},
}


@pytest.fixture(scope="module")
def torchrun(datasets, tmp_path_factory):
    """One ``torchrun --nproc_per_node 2`` run of every TORCHRUN scenario (2 epochs each): (spec, rank results)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    scenarios = []
    for name, (n, options, loader) in TORCHRUN.items():
        paths = list(map(os.fspath, datasets[n]))
        s = {"name": name, "n": n, "options": {**OPTIONS, **options}, "loader": loader}
        if "truncated" in name:
            paths = [os.fspath(shutil.copy(p, tmp / f"{name}-{k}.svs")) for k, p in enumerate(paths)]
            s["truncate"] = [paths[1], 20000]
        scenarios.append({**s, "paths": paths, "labels": _labels(paths)})
    spec = {"epochs": 2, "timeout_s": DEADLINE_S, "collective_timeout_s": 30, "scenarios": scenarios,
            "explicit": {k: scenarios[0][k] for k in ("paths", "labels", "options")}}
    (tmp / "spec.json").write_text(json.dumps(spec))
    rc, output = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       os.fspath(SCRIPTS / "ddp_equal_steps.py"), os.fspath(tmp / "spec.json"), os.fspath(tmp / "out")],
                      tmp)
    if rc != 0:
        pytest.fail(f"torchrun exited with {rc}:\n{output[-6000:]}")
    return spec, [json.loads((tmp / "out" / f"rank{r}.json").read_text()) for r in range(2)]


def _scenario(torchrun, name: str) -> tuple[dict, list[dict]]:
    spec, ranks = torchrun
    results = [r["scenarios"][name] for r in ranks]
    for r, result in enumerate(results):
        assert "error" not in result, f"rank {r}:\n{result['error']}"
    return next(s for s in spec["scenarios"] if s["name"] == name), results


@pytest.mark.parametrize("name", [k for k in TORCHRUN if "loader" not in k])
def test_torchrun_two_ranks_step_together_under_ddp(torchrun, name):
    s, results = _scenario(torchrun, name)
    assert [r["shard"] for r in results] == [[0, 2], [1, 2]]
    lengths = [r["len"] for r in results]
    failed = {1} if s.get("truncate") else set()
    orders = []
    for epoch in range(torchrun[0]["epochs"]):
        check_epoch([r["epochs"][epoch] for r in results], _expected(s["n"]), lengths,
                    drop_last=s["options"].get("drop_last", False), failed=failed)
        orders.append([row[:3] for r in results for b in r["epochs"][epoch] for row in b])
    if s["options"].get("shuffle", True):
        assert orders[0] != orders[1], "epoch 1 repeats epoch 0's order"
    if not failed:  # the group's epoch e on rank r is TileDataset(shard=(r, 2)) epoch e, as in one process
        options = {k: v for k, v in s["options"].items() if k != "backend"}
        for r, result in enumerate(results):
            for epoch, batches in enumerate(result["epochs"]):
                assert batches == _reference(s["paths"], (r, 2), epoch, **options), f"rank {r}, epoch {epoch}"
    if failed:
        assert all(s["paths"][1] in r["failed"] for r in results)
        assert all(any(os.path.basename(s["paths"][1]) in m for m in rank["log"]) for rank in torchrun[1])


@pytest.mark.parametrize("name", [k for k in TORCHRUN if "loader" in k])
def test_torchrun_dataloader_workers_give_the_pipelines_batches(torchrun, name):
    """``DataLoader(TileDataset, batch_size=None, num_workers=2)`` under DDP = the Pipeline's 2 lanes in threads."""
    _, results = _scenario(torchrun, name)
    _, pipeline = _scenario(torchrun, "385-drop0")
    assert [r["shard"] for r in results] == [[0, 2], [1, 2]]
    assert [r["epochs"] for r in results] == [r["epochs"] for r in pipeline]


def test_torchrun_explicit_shard_wins(torchrun):
    explicit = [r["explicit"] for r in torchrun[1]]
    _, auto = _scenario(torchrun, "385-drop0")
    assert [e["mine_shard"] for e in explicit] == [[0, 2], [1, 2]]
    assert [e["mine_epoch0"] for e in explicit] == [r["epochs"][0] for r in auto]  # what the group gave
    assert all(e["whole_shard"] == [0, 1] and e["whole_len"] == -(-385 // BATCH) for e in explicit)
    for e in explicit:
        assert any("shard" in m for m in e["whole_warnings"]), f"no warning for shard=(0, 1) under 2 ranks: {e}"


def _lightning_spec(tmp_path: Path, paths, runs: list[dict]) -> None:
    paths = list(map(os.fspath, paths))
    spec = {"timeout_s": DEADLINE_S, "paths": paths, "labels": _labels(paths), "options": OPTIONS, "runs": runs}
    (tmp_path / "spec.json").write_text(json.dumps(spec))


def _lightning_epochs(result: dict) -> list[list[list[list[int]]]]:
    return [[s["rows"] for s in result["steps"] if s["epoch"] == e] for e in (0, 1)]


def _prints(result: dict, epoch: int) -> dict:
    return {tuple(row[:3]): p for s in result["steps"] if s["epoch"] == epoch for row, p in zip(s["rows"], s["prints"])}


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_lightning_ddp_shards_a_pipeline_built_without_shard(datasets, tmp_path, strategy):
    pytest.importorskip("lightning")
    _lightning_spec(tmp_path, datasets[385], [{"name": "pipe", "loader": {"kind": "pipeline"},
                                               "trainer": {"devices": 2, "strategy": strategy}}])
    rc, output = _run([sys.executable, os.fspath(SCRIPTS / "lightning_fit.py"), os.fspath(tmp_path / "spec.json"),
                       os.fspath(tmp_path / "out")], tmp_path)
    assert rc == 0, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    results = [json.loads((tmp_path / "out" / f"pipe.rank{r}.json").read_text()) for r in range(2)]
    assert [r["shard"] for r in results] == [[0, 2], [1, 2]] and all(r["world"] == 2 for r in results)
    lengths = [r["len"] for r in results]
    per_rank = [_lightning_epochs(r) for r in results]
    for epoch in (0, 1):
        check_epoch([p[epoch] for p in per_rank], _expected(385), lengths, drop_last=False)
    for r, result in enumerate(results):
        epochs = _lightning_epochs(result)
        assert epochs[0] != epochs[1], "epoch 1 repeats epoch 0"
        for epoch in (0, 1):  # Lightning's epoch e is the Pipeline's epoch e: a rerun gives the same batches
            assert epochs[epoch] == _reference(datasets[385], (r, 2), epoch), f"rank {r}, epoch {epoch}"
    first = {k: v for r in results for k, v in _prints(r, 0).items()}
    second = {k: v for r in results for k, v in _prints(r, 1).items()}
    assert sum(first[k] != second[k] for k in first.keys() & second.keys()) > len(first) // 2, \
        "epoch 1's augmentation repeats epoch 0's"
    warned = (tmp_path / "out" / "pipe.warnings.json")
    _no_len_warning(output + (warned.read_text() if warned.exists() else ""))


def test_lightning_dataloader_workers_advance_the_epoch(datasets, tmp_path):
    pytest.importorskip("lightning")
    runs = [{"name": f"w{w}{'p' if p else ''}", "loader": {"kind": "dataloader", "num_workers": w,
                                                           "persistent_workers": p},
             "trainer": {"devices": 1}} for w, p in ((0, False), (2, False), (2, True))]
    _lightning_spec(tmp_path, datasets[383], runs)
    rc, output = _run([sys.executable, os.fspath(SCRIPTS / "lightning_fit.py"), os.fspath(tmp_path / "spec.json"),
                       os.fspath(tmp_path / "out")], tmp_path)
    assert rc == 0, output[-6000:]
    reference = [_reference(datasets[383], (0, 1), epoch) for epoch in (0, 1)]
    for run in runs:
        result = json.loads((tmp_path / "out" / f"{run['name']}.rank0.json").read_text())
        assert result["shard"] == [0, 1]
        epochs = _lightning_epochs(result)
        for epoch in epochs:
            check_epoch([epoch], _expected(383), [result["len"]], drop_last=False)
        assert epochs[0] != epochs[1], f"{run['name']}: epoch 1 repeats epoch 0's order"
        assert epochs == reference, f"{run['name']}: Lightning's epochs 0, 1 are not the dataset's epochs 0, 1"
        first, second = _prints(result, 0), _prints(result, 1)
        assert sum(first[k] != second[k] for k in first) > len(first) // 2, \
            f"{run['name']}: epoch 1's augmentation repeats epoch 0's"
    for run in runs:
        _no_len_warning((tmp_path / "out" / f"{run['name']}.warnings.json").read_text())
    _no_len_warning(output)


def test_accelerate_two_ranks_see_every_tile_once_both_ways(datasets, tmp_path):
    """Under Accelerate (2 CPU ranks, MULTI_CPU): ``accelerator.prepare(DataLoader(TileDataset, batch_size=None))``
    (rank 0 iterates, Accelerate splits the batches) and a Pipeline without ``prepare`` both give each rank exactly
    its torchrun batches: every kept tile once across the ranks, plus the repeats, marked; a prepared loader with
    workers is refused on every rank with a message that says what to do."""
    pytest.importorskip("accelerate")
    paths = list(map(os.fspath, datasets[385]))
    spec = {"timeout_s": DEADLINE_S, "epochs": 2, "paths": paths, "labels": _labels(paths), "options": OPTIONS}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    rc, output = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       os.fspath(SCRIPTS / "accelerate_run.py"), os.fspath(tmp_path / "spec.json"),
                       os.fspath(tmp_path / "out")], tmp_path)
    assert rc == 0, output[-6000:]
    results = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" and r["world"] == 2 for r in results)
    for way in ("loader", "pipe"):
        lengths = [r[way]["len"] for r in results]
        for epoch in range(2):
            ranks = [r[way]["epochs"][epoch] for r in results]
            for rank in ranks:  # labelled data: the repeats are exactly the −100 rows
                assert all(bool(row[4]) == (row[3] == NO_LABEL) for b in rank for row in b), way
            check_epoch([[[row[:4] for row in b] for b in rank] for rank in ranks], _expected(385), lengths,
                        drop_last=False)
            for r in range(2):  # rank r's batches are its torchrun batches of the same epoch
                got = [[row[:4] for row in b] for b in ranks[r]]
                assert got == _reference(datasets[385], (r, 2), epoch), f"{way}: rank {r}, epoch {epoch}"
    for r in results:
        assert "num_workers=0" in r["workers"] and "Pipeline" in r["workers"], r["workers"]


# ---------------------------------------------------------------------------------------- README recipes


def _readme_block(first_line: str) -> str:
    """The README's code block (any fence) whose first line starts with ``first_line``."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"README: {len(found)} blocks start with {first_line!r}"
    return found[0]


@pytest.fixture
def readme_data(tmp_path):
    """tmp_path holding ``slides/`` (class folders and manifest.csv, as the README's first block writes), small:
    256-pixel regions, one tile each, five patients per class (the recipes split them 0.8/0.2)."""
    hf.synth.write_region_dataset(tmp_path / "slides", classes=("NORM", "ADC"), n_per_class=5, size=256,
                                  patients_per_class=5)
    return tmp_path


def test_readme_torchrun_recipe_runs_as_written(readme_data):
    script = readme_data / "train_ddp.py"
    script.write_text(_readme_block("# train_ddp.py"))
    rc, output = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       os.fspath(script)], readme_data)
    assert rc == 0, output[-6000:]
    assert (readme_data / "model.pt").is_file()


def test_readme_lightning_recipe_runs_as_written(readme_data):
    pytest.importorskip("lightning")
    script = readme_data / "train_lightning.py"
    script.write_text(_readme_block("# train_lightning.py"))
    rc, output = _run([sys.executable, os.fspath(script)], readme_data)
    assert rc == 0, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    _no_len_warning(output)


def test_repeats_are_marked_and_evaluation_counts_each_tile_once(datasets):
    """Unlabelled tiles (label −100, as every repeat's): ``repeat`` alone tells the repeat evening out a short
    shard, and an evaluation pass (``run_epoch``, as ``evaluate`` runs it) predicts every tile of the shard once."""
    from histofast.train.config import TrainConfig
    from histofast.train.loop import run_epoch

    paths = datasets[385]
    ds = TileDataset(paths, shard=(0, 2), progress=False, **OPTIONS)  # no labels: 192 tiles, 193 drawn
    batches = _epoch(ds)
    repeat = torch.cat([b["repeat"] for b in batches])
    assert repeat.dtype == torch.bool and int(repeat.sum()) == 1 and len(repeat) == ds.num_samples == 193
    assert set(torch.cat([b["label"] for b in batches]).tolist()) == {NO_LABEL}
    tiles = [tuple(r[:3]) for b in batches for r in _rows(b)]
    counted = [t for t, r in zip(tiles, repeat.tolist()) if not r]
    assert len(counted) == len(set(counted)) == 192 and set(tiles) == set(counted)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    ds.set_epoch(0)  # the same epoch again
    with torch.no_grad():
        result = run_epoch(model, ds, "train", TrainConfig(data="slides"), torch.device("cpu"), 2)
    assert len(result.labels) == len(result.patch) == len(result.slides) == 192  # each tile once
    assert sorted(result.slides.tolist()) == sorted(t[0] for t in counted)


def test_readme_accelerate_recipe_runs_as_written(readme_data):
    pytest.importorskip("accelerate")
    script = readme_data / "train_accelerate.py"
    script.write_text(_readme_block("# train_accelerate.py"))
    rc, output = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       os.fspath(script)], readme_data)
    assert rc == 0, output[-6000:]
    assert (readme_data / "model.pt").is_file() and "validation accuracy" in output
