"""TFRecordPipeline (``Pipeline.from_tfrecord``): exported shards read back through DALI's CPU pipeline, with
``Pipeline``'s interface: the same batch keys, ``len`` against the batches DALI actually yields for each shard,
``slide`` indexing ``pipe.slides`` (histofast's per-slide shards and foreign shards mixing slides), repr."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from common import augment_reference  # noqa: E402

import histofast as hf  # noqa: E402
from histofast.data._common import BATCH_KEYS  # noqa: E402
from histofast.data.sources import NO_LABEL  # noqa: E402
from histofast.export import ExportOptions, export_slides, slide_ids  # noqa: E402
from histofast.export.tfrecord import TFRecordWriter, decode_example, encode_example, read_tfrecord  # noqa: E402

SHARD_TILES = 7  # small shards: many files per slide, the last one short


@pytest.fixture(scope="module")
def export(make_slide, tmp_path_factory):
    """Three slides exported as TFRecord shards: (export folder, slide paths)."""
    paths = [make_slide(900, 700, seed=11), make_slide(700, 800, seed=12, tissue_fraction=0.7),
             make_slide(600, 600, seed=13)]
    out = tmp_path_factory.mktemp("tfrecord") / "out"
    export_slides(paths, out, ExportOptions(tile_size=128, format="tfrecord", quality=90, label=1,
                                            shard_tiles=SHARD_TILES), progress=False)
    return out, paths


def _rows(out) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _record_order(export) -> list[tuple[str, int, int]]:
    """(slide id, x, y) of every record from the manifest, in the order DALI's reader deals them out: the
    files as ``shard_files`` lists them (sorted paths), each file's records in order. The manifest's
    ``slide`` column holds the slide's path; the records, its id (``slide_ids``)."""
    out, paths = export
    ids = dict(zip(map(os.fspath, paths), slide_ids(paths)))
    rows = sorted(_rows(out), key=lambda r: (os.fspath(out / r["file"]), int(r["record"])))
    return [(ids[r["slide"]], int(r["x"]), int(r["y"])) for r in rows]


def _samples(pipe, batches) -> list[tuple[str, int, int]]:
    return [(pipe.slides[s], x, y) for b in batches
            for s, x, y in zip(b["slide"].tolist(), b["x"].tolist(), b["y"].tolist())]


def _epoch(pipe) -> list[dict]:
    return [{k: v.clone() for k, v in b.items()} for b in pipe]


def _tfrecord(out, **kw):
    return hf.Pipeline.from_tfrecord(out, **{"augment": None, "dtype": "uint8", "workers": 2, **kw})


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("size", [5, 3])
def test_len_is_the_batches_dali_yields_and_shards_split_as_dali_does(export, world, drop_last, size):
    out, _ = export
    order = _record_order(export)
    n = len(order)
    # world 3: shards of 16, a short last batch for either size; world 5: shards of 9 and 10, with size 3
    # 3 and 4 batches (DALI runs the smaller shard on into an empty batch)
    assert n == 48 and len(list(out.rglob("*.tfrecord"))) > 3
    for rank in range(world):
        pipe = _tfrecord(out, batch_size=size, shard=(rank, world), drop_last=drop_last, shuffle=rank % 2 == 0)
        pipe.set_epoch(1)
        batches = _epoch(pipe)
        start, stop = rank * n // world, (rank + 1) * n // world  # DALI's start_index(shard_id, num_shards, N)
        # every rank the same samples (DistributedSampler's rule), so the same batches: no DDP rank waits alone
        assert pipe.num_samples == (n // world if drop_last else -(-n // world))
        assert len(pipe) == len(batches) == (pipe.num_samples // size if drop_last else -(-pipe.num_samples // size))
        assert all(list(b) == list(BATCH_KEYS) for b in batches)
        assert all(len(b["x"]) == size for b in (batches if drop_last else batches[:-1]))
        got = _samples(pipe, batches)
        # the shard's records: all of them, the short shard's last one twice (its repeat labelled −100); or,
        # with drop_last, all but a dropped tail (which tail depends on the shuffle)
        assert set(got) <= set(order[start:stop]) and len(got) - len(set(got)) <= 1
        if not drop_last:
            assert sorted(set(got)) == sorted(order[start:stop])
            assert len(got) - len(set(got)) == pipe.num_samples - (stop - start)
            # the repeat is marked: counting the samples not marked counts each record once
            assert sum(int(b["repeat"].sum()) for b in batches) == pipe.num_samples - (stop - start)
            assert all(set(b["label"][b["repeat"]].tolist()) <= {NO_LABEL} for b in batches)


def test_a_record_per_shard_and_fewer_records_than_shards(export):
    out, _ = export
    order = _record_order(export)
    n = len(order)
    for rank in (0, n - 1):
        one = _tfrecord(out, batch_size=4, shard=(rank, n))
        batches = _epoch(one)
        assert len(one) == len(batches) == 1 and _samples(one, batches) == order[rank : rank + 1]
        dropped = _tfrecord(out, batch_size=4, shard=(rank, n), drop_last=True)
        assert (len(dropped), dropped.num_samples, _epoch(dropped)) == (0, 1, [])
    with pytest.raises(hf.HistofastError, match=f"{n} records in .* cannot be dealt to {n + 1} shards"):
        _tfrecord(out, shard=(0, n + 1))


def test_slide_indexes_slides_as_the_manifest_says(export):
    out, paths = export
    pipe = _tfrecord(out, batch_size=16, shuffle=True, seed=3)
    assert pipe.slides == sorted(slide_ids(paths))
    batches = _epoch(pipe)
    assert all(b["slide"].dtype == torch.int64 for b in batches)
    # every (x, y) of a slide's manifest rows comes back once, under that slide's index
    assert sorted(_samples(pipe, batches)) == sorted(_record_order(export))


def test_repr_and_the_pipeline_interface(export):
    out, _ = export
    n = len(_record_order(export))
    files = len(list(out.rglob("*.tfrecord")))
    pipe = _tfrecord(out, batch_size=8, shard=(1, 3), classes=["normal", "tumour"])
    tiles = 2 * n // 3 - n // 3
    assert repr(pipe) == (f"TFRecordPipeline(3 slides, {tiles} tiles, {-(-tiles // 8)} batches of 8, {files} files, "
                          "device='cpu')")
    assert (pipe.classes, pipe.failed) == (["normal", "tumour"], {})
    assert _tfrecord(out).classes == []
    with pytest.raises(hf.HistofastError, match="must be distinct"):
        _tfrecord(out, classes=["a", "a"])


def _mixed(out, folder, names):
    """The export's records rewritten into two files with no manifest, slides named round-robin from
    ``names`` (None: no ``slide`` feature): (expected (name, x, y) of every record)."""
    records = [decode_example(r) for f in sorted(out.rglob("*.tfrecord")) for r in read_tfrecord(f)][:30]
    folder.mkdir()
    expected = []
    for part in (0, 1):
        with TFRecordWriter(folder / f"mixed-{part}.tfrecord") as w:
            for i in range(part, len(records), 2):
                r = {k: v[0] if isinstance(v, list) else v for k, v in records[i].items()}
                r.pop("slide")
                name = names[i % len(names)]
                if name is not None:
                    r["slide"] = name
                w.write(encode_example(r))
                expected.append(("" if name is None else name, r["x"], r["y"]))
    return expected


def test_foreign_shards_mixing_slides_are_read_through(export, tmp_path):
    out, _ = export
    names = ["b", "", "slide-β-long-name", "a"]  # names of different lengths, one empty, one not ASCII
    expected = _mixed(out, tmp_path / "mixed", names)
    pipe = _tfrecord(tmp_path / "mixed", batch_size=4, shuffle=False)
    assert pipe.slides == sorted(names)
    got = _samples(pipe, _epoch(pipe))
    assert sorted(got) == sorted(expected)

    # records without a slide feature at all: one slide, ""
    expected = _mixed(out, tmp_path / "unnamed", [None])
    pipe = _tfrecord(tmp_path / "unnamed", batch_size=4, shuffle=False)
    assert pipe.slides == [""] and sorted(_samples(pipe, _epoch(pipe))) == sorted(expected)
    _mixed(out, tmp_path / "some", [None, "a"])
    with pytest.raises(hf.HistofastError, match="some have none"):
        _tfrecord(tmp_path / "some")


def test_a_manifest_that_does_not_match_its_shards_is_an_error_not_a_wrong_index(export, tmp_path):
    out, _ = export
    _mixed(out, tmp_path / "mixed", ["a", "b", "c"])  # mixed-0 starts with "a", mixed-1 with "b"
    # a manifest claiming each file holds one slide: only the first record is read, "c" turns up later
    with open(tmp_path / "mixed" / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide", "x", "y", "file", "record"])
        for part in (0, 1):
            for k in range(15):
                writer.writerow(["a.svs", 0, 0, f"mixed/mixed-{part}.tfrecord", k])
    pipe = _tfrecord(tmp_path / "mixed", batch_size=4, shuffle=False)
    assert pipe.slides == ["a", "b"]
    with pytest.raises(hf.HistofastError, match="slide b'c'"):
        _epoch(pipe)
    # a manifest vouches only for a file it counts every record of: one row less, and mixed-1 is read through
    manifest = tmp_path / "mixed" / "manifest.csv"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:-1]))
    pipe = _tfrecord(tmp_path / "mixed", batch_size=4, shuffle=False)
    assert pipe.slides == ["a", "b", "c"] and len(_epoch(pipe)) == len(pipe) == 8


def test_from_tfrecord_reads_exported_tiles_back(make_slide, tmp_path, openslide_level):
    path = make_slide(1000, 800, seed=6)
    export_slides([path], tmp_path / "out", ExportOptions(tile_size=128, format="tfrecord", quality=95, label=2,
                                                          shard_tiles=10), progress=False)
    grid = hf.tile_grid(path, 128)
    aug = hf.Augment(max_shift=6, seed=1)
    level = openslide_level(path, 0)
    seen = []
    for world in (1, 2):
        for rank in range(world):
            pipe = hf.Pipeline.from_tfrecord(tmp_path / "out", augment=aug, batch_size=8, shard=(rank, world),
                                             shuffle=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
            pipe.set_epoch(1)
            done = 0
            for b in pipe:
                # a shard one record short of ⌈N/world⌉ repeats its last one, labelled −100
                assert b["image"].shape[1:] == (3, 128, 128) and set(b["label"].tolist()) <= {2, -100}
                for j in np.flatnonzero(b["label"].numpy() == 2):
                    k = int(np.flatnonzero((grid.coords == (int(b["x"][j]), int(b["y"][j]))).all(1))[0])
                    tile = level[grid.grid_coords[k, 1] :, grid.grid_coords[k, 0] :][:128, :128]
                    p = aug.draw_at([(done + j) * world + rank], 1)
                    errors = []
                    for turn in (0, 1):  # the tile's own draw, and the same draw turned once more
                        ref = augment_reference(tile, np.zeros((1, 2), np.int64), 128, (p["rot90"] + turn) % 4,
                                                p["flip"], p["shift"], (0.5,) * 3, (0.25,) * 3, "float32", "NCHW")
                        errors.append(np.abs(b["image"][j].numpy() - ref[0]).mean() * 0.25 * 255)
                    # JPEG in the shard: the synthetic texture loses ~6 levels; a wrong draw loses far more
                    assert errors[0] < 8 and errors[0] < 0.5 * errors[1]
                    if world == 2:
                        seen.append(k)
                done += len(b["x"])
    assert sorted(seen) == list(range(len(grid)))


def test_from_tfrecord_bad_paths(tmp_path):
    with pytest.raises(hf.HistofastError, match="no .tfrecord shards"):
        hf.Pipeline.from_tfrecord(tmp_path)
    (tmp_path / "a.tfrecord").write_bytes(b"")
    with pytest.raises(hf.HistofastError, match="no DALI index a.tfrecord.idx"):
        hf.Pipeline.from_tfrecord(tmp_path / "a.tfrecord")


def test_epochs_advance_by_themselves_and_the_eval_preset_holds_still(export):
    out, _ = export
    pipe = _tfrecord(out, batch_size=8, shuffle=True)
    first, second = _samples(pipe, _epoch(pipe)), _samples(pipe, _epoch(pipe))
    assert pipe.epoch == 1 and first != second and sorted(first) == sorted(second)
    pipe.set_epoch(0)
    assert _samples(pipe, _epoch(pipe)) == first
    still = _tfrecord(out, batch_size=8, preset="eval")
    assert still.batch.augment is None and _samples(still, _epoch(still)) == _samples(still, _epoch(still))


def test_unlabelled_records_read_as_minus_100(make_slide, tmp_path):
    path = make_slide(600, 600, seed=8)
    export_slides([path], tmp_path / "out", ExportOptions(tile_size=128, format="tfrecord"), progress=False)
    pipe = hf.Pipeline.from_tfrecord(tmp_path / "out", batch_size=64)
    assert {v for b in pipe for v in b["label"].tolist()} == {-100}  # cross_entropy's default ignore_index
