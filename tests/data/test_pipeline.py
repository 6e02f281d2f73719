"""Pipeline and TileDataset: pixels against OpenSlide + a numpy augmentation recipe, order and
sharding properties, the two backends against each other, DataLoader workers, bad input."""
from __future__ import annotations

import logging
import os
import shutil
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from common import EXACT_ATOL, augment_reference  # noqa: E402

import histofast as hf  # noqa: E402
from histofast.data import _common  # noqa: E402
from histofast.data.dataset import TileDataset  # noqa: E402


@pytest.fixture(scope="module")
def slides(make_slide):
    return [make_slide(1500, 1100, seed=1), make_slide(1100, 1300, seed=2, tissue_fraction=0.7),
            make_slide(1200, 900, seed=3)]


def _opts(**kw):
    base = dict(tile_size=128, stride=96, batch_size=16, lanes=2, progress=False)
    return {**base, **kw}


def _epoch(it) -> list[dict]:
    return [{k: v.clone() for k, v in b.items()} for b in it]


def _keys(batches) -> list[tuple[int, int, int]]:
    return [key for b in batches for key in zip(b["slide"].tolist(), b["x"].tolist(), b["y"].tolist())]


def _check_pixels(ds, batches, openslide_level, mean=(0, 0, 0), std=(1, 1, 1)):
    """Every sample equals the numpy recipe on the whole level read by OpenSlide, with its draw."""
    s = ds.samples
    for b in batches:
        for j in range(len(b["x"])):
            i = int(b["slide"][j])
            grid = s.grids[i]
            k = int(np.flatnonzero((grid.coords == (int(b["x"][j]), int(b["y"][j]))).all(1))[0])
            params = s.batch.augment.draw_at([s.offsets[i] + k], ds.epoch) if s.batch.augment else \
                {"rot90": [0], "flip": [False], "shift": np.zeros((1, 2), np.int64)}
            ref = augment_reference(openslide_level(ds.slides[i], 0), grid.grid_coords[k : k + 1], s.tile_size,
                                    params["rot90"], params["flip"], params["shift"], mean, std, s.batch.out_dtype,
                                    "NCHW")
            np.testing.assert_allclose(b["image"][j].numpy().astype(np.float64), ref[0].astype(np.float64),
                                       atol=EXACT_ATOL[s.batch.out_dtype], rtol=0)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_pixels_match_openslide_and_numpy_recipe(slides, openslide_level, dtype):
    mean, std = ((0.7, 0.6, 0.75), (0.15, 0.2, 0.1)) if dtype != "uint8" else ((0, 0, 0), (1, 1, 1))
    ds = TileDataset(slides, **_opts(dtype=dtype, mean=mean, std=std, augment=hf.Augment(max_shift=20, seed=5)))
    ds.set_epoch(3)
    batches = _epoch(ds)
    assert all(b["image"].shape[1:] == (3, 128, 128) and str(b["image"].dtype) == f"torch.{dtype}" for b in batches)
    _check_pixels(ds, batches, openslide_level, mean, std)


def test_uint8_samples_refuse_a_normalisation_they_would_ignore(slides):
    """Issue 15, item 14: mean/std with uint8 output were silently ignored; now refused before any slide is read."""
    with pytest.raises(hf.HistofastError, match="uint8 output is never normalised"):
        TileDataset(slides, **_opts(dtype="uint8", mean=hf.ops.IMAGENET_MEAN, std=hf.ops.IMAGENET_STD))


def test_epoch_holds_every_kept_tile_once_and_len_is_right(slides):
    ds = TileDataset(slides, **_opts())
    grids = ds.samples.grids
    expected = {(i, int(x), int(y)) for i, g in enumerate(grids) for x, y in g.coords}
    batches = _epoch(ds)
    assert len(batches) == len(ds) and all(len(b["x"]) == 16 for b in batches[:-1])
    assert sorted(_keys(batches)) == sorted(expected)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_cover_every_tile_in_equal_steps(slides, world, shuffle):
    """DistributedSampler's rule: every rank the same ⌈N/world⌉ samples, the short shares repeating their own
    first samples; so the union covers every kept tile and only the repeats appear twice."""
    base = TileDataset(slides, **_opts(shuffle=shuffle))
    expected = sorted({(i, int(x), int(y)) for i, g in enumerate(base.samples.grids) for x, y in g.coords})
    for epoch in (0, 1):
        keys, steps = [], []
        for rank in range(world):
            ds = TileDataset(slides, **_opts(shuffle=shuffle, shard=(rank, world)))
            ds.set_epoch(epoch)
            batches = _epoch(ds)
            mine = _keys(batches)
            assert len(mine) == ds.num_samples == -(-len(expected) // world)
            keys += mine
            steps.append([len(b["x"]) for b in batches])
            assert len(batches) == len(ds)
        assert sorted(set(keys)) == expected
        assert len(keys) - len(expected) == world * -(-len(expected) // world) - len(expected)
        assert max(Counter(keys).values()) <= 2
        assert all(s == steps[0] for s in steps)


def test_same_seed_same_batches_new_epoch_new_draw(slides):
    a, b = TileDataset(slides, **_opts()), TileDataset(slides, **_opts())
    first, again = _epoch(a), _epoch(b)
    for x, y in zip(first, again):
        assert all(torch.equal(x[k], y[k]) for k in _common.BATCH_KEYS)
    b.set_epoch(1)
    second = _epoch(b)
    assert _keys(second) != _keys(first) and sorted(_keys(second)) == sorted(_keys(first))
    c = TileDataset(slides, **_opts(seed=1))
    assert _keys(_epoch(c)) != _keys(first)


def test_unshuffled_order_is_blocks_in_slide_order(slides):
    ds = TileDataset(slides, **_opts(shuffle=False, lanes=1, augment=None))
    slide_of = [k[0] for k in _keys(_epoch(ds))]
    assert slide_of == sorted(slide_of)


def test_dataloader_workers_give_the_threads_order(slides, openslide_level):
    ds = TileDataset(slides, **_opts(lanes=2, dtype="uint8"))
    ds.set_epoch(2)
    threads = _epoch(ds)
    ds.set_epoch(2)  # else the loader's iteration is the next epoch
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    workers = _epoch(loader)
    assert len(workers) == len(threads) == len(ds)
    for x, y in zip(threads, workers):
        assert all(torch.equal(x[k], y[k]) for k in _common.BATCH_KEYS)
    _check_pixels(ds, workers[:2], openslide_level)


def test_drop_last(slides):
    ds = TileDataset(slides, **_opts(drop_last=True, batch_size=50))
    batches = _epoch(ds)
    assert len(batches) == len(ds) == ds.num_samples // 50 and all(len(b["x"]) == 50 for b in batches)


def test_pipeline_torch_backend_matches_dataset(slides):
    ds = TileDataset(slides, **_opts())
    pipe = hf.Pipeline(slides, backend="torch", **_opts())
    assert len(pipe) == len(ds) and "backend='torch'" in repr(pipe)
    for x, y in zip(_epoch(ds), _epoch(pipe)):
        assert all(torch.equal(x[k], y[k]) for k in _common.BATCH_KEYS)


def test_dali_backend_matches_torch_backend(slides):
    pytest.importorskip("nvidia.dali")
    pipes = {be: hf.Pipeline(slides, backend=be, **_opts(dtype="float16", shard=(1, 2))) for be in ("dali", "torch")}
    for epoch in (0, 1):
        out = {}
        for be, pipe in pipes.items():
            pipe.set_epoch(epoch)
            out[be] = _epoch(pipe)
        assert len(out["dali"]) == len(out["torch"]) == len(pipes["dali"])
        for x, y in zip(out["dali"], out["torch"]):
            assert all(torch.equal(x[k], y[k]) for k in _common.BATCH_KEYS)


@pytest.mark.parametrize("dtype, mode, atol", [("float32", "tiles", 1e-6), ("float16", "images", 2e-3)])
def test_dali_normalises_uint8_samples_like_the_torch_backend(slides, dtype, mode, atol):
    """The DALI backend is fed uint8 samples and normalises inside DALI (crop_mirror_normalize, 4× less data to
    copy): the same batches as the torch backend within float rounding (x/255 − m)/s vs (x − 255m)/(255s)."""
    pytest.importorskip("nvidia.dali")
    extra = dict(mode="images", image_size=256) if mode == "images" else {}
    options = _opts(dtype=dtype, mean=hf.ops.IMAGENET_MEAN, std=hf.ops.IMAGENET_STD, **extra)
    pipes = {be: hf.Pipeline(slides, backend=be, **options) for be in ("dali", "torch")}
    assert pipes["dali"].tile_dataset.samples.batch.out_dtype == "uint8"
    out = {be: _epoch(pipe) for be, pipe in pipes.items()}
    assert len(out["dali"]) == len(out["torch"]) == len(pipes["torch"]) > 0
    for x, y in zip(out["dali"], out["torch"]):
        assert x["image"].dtype == y["image"].dtype == getattr(torch, dtype) and x["image"].shape == y["image"].shape
        torch.testing.assert_close(x["image"].float(), y["image"].float(), atol=atol, rtol=0)
        assert all(torch.equal(x[k], y[k]) for k in _common.BATCH_KEYS if k != "image")


def test_images_mode_stacks_each_windows_patch_grid(make_slide, openslide_level):
    path = make_slide(1400, 1000, seed=4, tissue_fraction=0.8)
    aug = hf.Augment(max_shift=8, seed=2)
    ds = TileDataset([path], 128, 64, mode="images", image_size=320, max_white=1.0, augment=aug, batch_size=3,
                     dtype="uint8", lanes=1, progress=False)
    batches = _epoch(ds)
    grid = ds.samples.grids[0]
    assert grid.tile_size == 320 and grid.stride == 320 and len(grid) == 4 * 3
    level = openslide_level(path, 0)
    for b in batches:
        assert b["image"].shape[1:] == (16, 3, 128, 128)  # (320 - 128) // 64 + 1 = 4 patches a side
        for j in range(len(b["x"])):
            k = int(np.flatnonzero((grid.coords == (int(b["x"][j]), int(b["y"][j]))).all(1))[0])
            p = aug.draw_at([k], 0)
            window = augment_reference(level, grid.grid_coords[k : k + 1], 320, p["rot90"], p["flip"], p["shift"],
                                       (0, 0, 0), (1, 1, 1), "uint8", "NHWC")[0]
            for n, (r, c) in enumerate(np.ndindex(4, 4)):
                patch = window[r * 64 : r * 64 + 128, c * 64 : c * 64 + 128].transpose(2, 0, 1)
                assert np.array_equal(b["image"][j, n].numpy(), patch)


def test_labels_from_manifest_and_class_folders(tmp_path):
    root = hf.synth.write_region_dataset(tmp_path / "ds", classes=("SC", "ADC"), n_per_class=2, size=256)
    for source in (root, root / "manifest.csv"):
        ds = TileDataset(source, 128, 128, max_white=1.0, augment=None, batch_size=64, progress=False)
        assert ds.classes == ["ADC", "SC"]
        b = next(iter(ds))
        names = [os.path.basename(os.path.dirname(ds.slides[i])) for i in b["slide"].tolist()]
        assert [ds.classes[k] for k in b["label"].tolist()] == names
    ds = TileDataset(root, 128, 128, classes=["NORM", "SC", "ADC"], max_white=1.0, progress=False)
    assert set(next(iter(ds))["label"].tolist()) == {1, 2}
    unlabelled = TileDataset(sorted(root.glob("SC/*.png")), 128, 128, max_white=1.0, progress=False)
    assert set(next(iter(unlabelled))["label"].tolist()) == {-100}  # cross_entropy's default ignore_index


def test_tile_grids_as_source(slides):
    grids = [hf.tile_grid(p, 128, 96) for p in slides[:2]]
    ds = TileDataset(grids, batch_size=16, progress=False)
    assert ds.num_samples == sum(len(g) for g in grids) and ds.slides == [os.fspath(p) for p in slides[:2]]


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_slide_failing_mid_epoch_is_replaced_and_the_steps_stay(slides, tmp_path, caplog, lanes):
    """Its samples are replaced by repeats of other slides' samples (label −100): the same batches, of the
    same sizes, as planned, so ranks under DDP stay in step."""
    paths = [os.fspath(shutil.copy(p, tmp_path / f"{k}.svs")) for k, p in enumerate(slides)]
    ds = TileDataset(paths, labels=["a", "b", "a"], **_opts(lanes=lanes))
    kept = ds.samples.counts
    planned = [min(16, int(kept.sum()) - 16 * k) for k in range(len(ds))]
    os.truncate(paths[1], 20000)  # scored fine, then damaged: its tiles can no longer be decoded
    with caplog.at_level(logging.WARNING, logger="histofast"):
        batches = _epoch(ds)
    assert "1.svs" in caplog.text and paths[1] in ds.failed and "replaced by repeats" in caplog.text
    assert [len(b["x"]) for b in batches] == planned
    keys, labels = _keys(batches), torch.cat([b["label"] for b in batches]).tolist()
    real = [k for k, label in zip(keys, labels) if label != -100]
    assert {k[0] for k in keys} == {0, 2} and sorted(real) == sorted(set(real))
    assert len(real) == kept[0] + kept[2] and labels.count(-100) == kept[1]


def test_a_slide_failing_while_scored_is_left_out(slides, tmp_path, caplog):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    with caplog.at_level(logging.WARNING, logger="histofast"):
        ds = TileDataset([slides[0], bad], **_opts())
    assert os.fspath(bad) in ds.failed and "bad.svs" in caplog.text
    assert {k[0] for k in _keys(_epoch(ds))} == {0}


@pytest.mark.parametrize("kwargs, match", [
    (dict(source=[]), "holds no slides"),
    (dict(source=["/nonexistent/a.svs"]), "no such file: /nonexistent/a.svs"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(shard=(2, 2)), r"shard=\(2, 2\)"),
    (dict(shard=(0, 0)), "world_size"),
    (dict(mode="bags"), "mode='bags'"),
    (dict(mode="images", image_size=64), "image_size=64"),
    (dict(classes=["X"], labels=["A", "B", "A"]), r"labels \['A', 'B'\] match none of classes"),
    (dict(labels=["A"]), "1 labels for 3 slides"),
    (dict(lanes=0), "lanes=0"),
    (dict(seed=-1), "seed=-1"),
    (dict(max_white=2), "max_white=2"),
])
def test_bad_input(slides, kwargs, match):
    kwargs = {"source": slides, **_opts(), **kwargs}
    with pytest.raises(hf.HistofastError, match=match):
        TileDataset(**kwargs)


def test_empty_folder_and_no_tissue(tmp_path, make_slide):
    (tmp_path / "empty").mkdir()
    with pytest.raises(hf.HistofastError, match="holds no slides"):
        TileDataset(tmp_path / "empty", progress=False)
    with pytest.raises(hf.HistofastError, match="no tissue tiles"):
        TileDataset([make_slide(600, 600, seed=9, tissue_fraction=0.0)], 128, progress=False)


def test_pipeline_bad_device_and_backend(slides, monkeypatch):
    if not hf.cuda_available():
        with pytest.raises(hf.HistofastError, match="device='cuda': no CUDA device"):
            hf.Pipeline(slides, device="cuda", **_opts())
    with pytest.raises(hf.HistofastError, match="backend='jax'"):
        hf.Pipeline(slides, backend="jax", **_opts())
    monkeypatch.setattr("histofast.data.pipeline.dali_installed", lambda: False)
    with pytest.raises(hf.HistofastError, match=r"pip install histofast\[dali\]"):
        hf.Pipeline(slides, backend="dali", **_opts())
    assert hf.Pipeline(slides, **_opts()).backend == "torch"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_cuda_pipeline_equals_cpu(slides, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    cpu = _epoch(hf.Pipeline(slides, backend="torch", **_opts(dtype="uint8")))
    gpu = _epoch(hf.Pipeline(slides, backend=backend, device="cuda", **_opts(dtype="uint8")))
    for x, y in zip(cpu, gpu):
        assert y["image"].is_cuda and y["label"].is_cuda
        assert all(torch.equal(x[k], y[k].cpu()) for k in _common.BATCH_KEYS)
