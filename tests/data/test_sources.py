"""Sources: manifests, class folders, and ``split`` keeping every patient in one split."""
from __future__ import annotations

import csv
import os

import pytest

import histofast as hf
from histofast.data.sources import class_index, read_manifest, resolve, write_manifest


def _manifest(tmp_path, rows, header=("path", "label", "patient")):
    for row in rows:
        (tmp_path / row[0]).write_bytes(b"x")
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(classes=("A", "B", "C"), patients=7, per_patient=3):
    return [(f"{c}{p}_{k}.tif", c, f"{c}-P{p}") for c in classes for p in range(patients) for k in range(per_patient)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.5, 0.5), (0.8, 0.0, 0.2)])
def test_split_is_patient_disjoint_complete_and_per_class(tmp_path, seed, fractions):
    path = _manifest(tmp_path, _rows())
    parts = hf.split(path, by="patient", fractions=fractions, seed=seed)
    assert len(parts) == len(fractions)
    patients = [{s.patient for s in part} for part in parts]
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            assert not patients[a] & patients[b]
    assert sorted(s.path for part in parts for s in part) == sorted(s.path for s in read_manifest(path))
    for part, share in zip(parts, fractions):
        for label in "ABC":
            groups = {s.patient for s in part if s.label == label}
            assert len(groups) == round(7 * share) or (share > 0 and len(groups) >= 1)
    assert parts == hf.split(path, fractions=fractions, seed=seed)


def test_split_by_slide_and_round_trip(tmp_path):
    path = _manifest(tmp_path, _rows(patients=2))
    train, test = hf.split(path, by="slide", fractions=(0.5, 0.5))
    assert len(train) + len(test) == 18
    write_manifest(test, tmp_path / "test.csv")
    assert read_manifest(tmp_path / "test.csv") == [hf.SlideSource(os.path.abspath(s.path), s.label, s.patient)
                                                   for s in test]


def test_region_dataset_split_feeds_a_dataset(tmp_path):
    pytest.importorskip("torch")
    root = hf.synth.write_region_dataset(tmp_path / "ds", classes=("NORM", "ADC"), n_per_class=8, size=128)
    train, val = hf.split(root / "manifest.csv", fractions=(0.5, 0.5))
    assert {s.label for s in val} == {"NORM", "ADC"}
    ds = hf.TileDataset(val, 128, 128, max_white=1.0, progress=False)
    assert ds.num_samples == len(val) and ds.classes == ["ADC", "NORM"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(by="scanner"), "by='scanner'"),
    (dict(fractions=(0.5, 0.6)), "sum to 1"),
    (dict(fractions=(1.2, -0.2)), "non-negative"),
])
def test_split_bad_arguments(tmp_path, kwargs, match):
    path = _manifest(tmp_path, _rows(patients=2))
    with pytest.raises(hf.HistofastError, match=match):
        hf.split(path, **kwargs)


def test_split_without_patients_says_what_to_do(tmp_path):
    path = _manifest(tmp_path, [("a.tif", "A"), ("b.tif", "B")], header=("path", "label"))
    with pytest.raises(hf.HistofastError, match="no patient id.*by='slide'"):
        hf.split(path)


def test_manifest_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.tif,A\n")
    with pytest.raises(hf.HistofastError, match="bad.csv: no 'path' column"):
        resolve(bad)
    with pytest.raises(hf.HistofastError, match="no such file"):
        resolve(_manifest(tmp_path, []).parent / "missing.svs")
    with pytest.raises(TypeError, match="source"):
        resolve(42)


def test_class_index_default_is_sorted_names():
    items = [hf.SlideSource("a", "SC"), hf.SlideSource("b", "ADC"), hf.SlideSource("c")]
    classes, index = class_index(items, None)
    assert classes == ["ADC", "SC"] and index.tolist() == [1, 0, -100]
