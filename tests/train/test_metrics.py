"""Metrics against scikit-learn as the independent reference, their NaN conventions and errors,
and the PNG plots."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from histofast.errors import HistofastError
from histofast.train import plots
from histofast.train.metrics import Report, aggregate, auc, classification_report, confusion_matrix, roc_curve

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CASES = [(seed, num_classes, n) for seed in range(3) for num_classes, n in ((2, 50), (3, 137), (4, 300), (5, 500))]


def _sample(seed: int, num_classes: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities rounded to 2 decimals (many tied scores) and labels that follow them loosely."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return np.round(probabilities, 2), labels


@pytest.mark.parametrize("seed,num_classes,n", CASES)
def test_confusion_matrix_matches_sklearn(seed, num_classes, n):
    rng = np.random.default_rng(seed)
    labels, predictions = rng.integers(0, num_classes, n), rng.integers(0, num_classes, n)
    ours = confusion_matrix(labels, predictions, num_classes)
    assert ours.dtype == np.int64 and ours.shape == (num_classes, num_classes)
    np.testing.assert_array_equal(ours, skm.confusion_matrix(labels, predictions, labels=range(num_classes)))


@pytest.mark.parametrize("seed,num_classes,n", CASES)
def test_roc_curve_matches_sklearn(seed, num_classes, n):
    probabilities, labels = _sample(seed, num_classes, n)
    for i in range(num_classes):
        fpr, tpr, thresholds = roc_curve(probabilities[:, i], labels == i)
        ref_fpr, ref_tpr, ref_thresholds = skm.roc_curve(labels == i, probabilities[:, i], drop_intermediate=False)
        np.testing.assert_array_equal(fpr, ref_fpr)
        np.testing.assert_array_equal(tpr, ref_tpr)
        np.testing.assert_array_equal(thresholds, ref_thresholds)
        assert thresholds[0] == np.inf and (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)


def test_roc_curve_ties_and_integer_positives():
    fpr, tpr, thresholds = roc_curve([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.5, 0.1])
    np.testing.assert_array_equal(fpr, [0, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 1, 1])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_roc_curve_without_positives_or_negatives_is_nan():
    fpr, tpr, _ = roc_curve([0.2, 0.7, 0.7], [False, False, False])
    np.testing.assert_array_equal(fpr, [0, 2 / 3, 1])
    assert np.isnan(tpr).all() and np.isnan(auc(fpr, tpr))
    np.testing.assert_array_equal(tpr, skm.roc_curve([False] * 3, [0.2, 0.7, 0.7], drop_intermediate=False)[1])
    fpr, tpr, _ = roc_curve([0.2, 0.7], [True, True])
    assert np.isnan(fpr).all() and np.isnan(auc(fpr, tpr))
    np.testing.assert_array_equal(fpr, skm.roc_curve([True] * 2, [0.2, 0.7], drop_intermediate=False)[0])


@pytest.mark.parametrize("seed,num_classes,n", CASES)
def test_classification_report_matches_sklearn(seed, num_classes, n):
    probabilities, labels = _sample(seed, num_classes, n)
    classes = [f"class{i}" for i in range(num_classes)]
    report = classification_report(probabilities, labels, classes, loss=0.25)
    predictions = probabilities.argmax(axis=1)

    assert report.count == n and report.classes == classes and report.loss == 0.25
    assert report.accuracy == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-15)
    precision, recall, _, _ = skm.precision_recall_fscore_support(
        labels, predictions, labels=range(num_classes), zero_division=0)
    np.testing.assert_allclose(report.precision, precision, rtol=1e-15)
    np.testing.assert_allclose(report.recall, recall, rtol=1e-15)
    np.testing.assert_array_equal(report.confusion, skm.confusion_matrix(labels, predictions))
    reference = [skm.roc_auc_score(labels == i, probabilities[:, i]) for i in range(num_classes)]
    np.testing.assert_allclose(report.auc, reference, rtol=1e-12)
    assert report.macro_auc == pytest.approx(np.mean(reference), rel=1e-12)
    for i, (fpr, tpr) in enumerate(report.roc):
        assert auc(fpr, tpr) == report.auc[i]
        np.testing.assert_array_equal(fpr, skm.roc_curve(labels == i, probabilities[:, i],
                                                         drop_intermediate=False)[0])


def test_precision_and_recall_of_a_class_never_predicted_or_absent_are_zero():
    probabilities = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.1, 0.2, 0.7]])
    report = classification_report(probabilities, [0, 1, 0], ["a", "b", "c"])
    np.testing.assert_array_equal(report.precision, [0.5, 0, 0])  # b never predicted, c predicted wrongly
    np.testing.assert_array_equal(report.recall, [0.5, 0, 0])  # c has no samples


def test_absent_class_auc_is_nan_and_macro_auc_skips_it():
    probabilities, labels = _sample(0, 3, 120)
    labels[labels == 2] = 0
    report = classification_report(probabilities, labels, ["a", "b", "c"])
    assert np.isnan(report.auc[2]) and np.isnan(report.roc[2][1]).all()
    assert not np.isnan(report.auc[:2]).any()
    assert report.macro_auc == pytest.approx(np.mean(report.auc[:2]))
    assert report.recall[2] == 0


def test_single_label_leaves_every_auc_undefined():
    probabilities, _ = _sample(1, 3, 40)
    report = classification_report(probabilities, np.ones(40, dtype=int), ["a", "b", "c"])
    assert np.isnan(report.auc).all() and np.isnan(report.macro_auc)
    assert np.isnan(report.roc[1][0]).all()  # every label is class 1: no negatives, fpr undefined
    assert report.to_dict()["macro_auc"] is None


def test_to_dict_is_json_safe_and_table_names_the_classes():
    probabilities, labels = _sample(2, 3, 80)
    labels[labels == 1] = 0
    report = classification_report(probabilities, labels, ["NORM", "ADC", "SCC"], loss=np.float32(0.5))
    record = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(record) == {"loss", "count", "accuracy", "precision", "recall", "auc", "macro_auc", "confusion",
                           "classes"}
    assert record["auc"][1] is None and record["classes"] == ["NORM", "ADC", "SCC"] and record["loss"] == 0.5
    assert record["count"] == 80 and sum(map(sum, record["confusion"])) == 80
    assert isinstance(record["confusion"][0][0], int)

    table = report.table()
    lines = table.splitlines()
    assert len(lines) == 5 and all(name in table for name in ("NORM", "ADC", "SCC"))
    assert "n/a" in lines[2] and "accuracy" in lines[-1] and "loss 0.5000" in lines[-1] and "count 80" in lines[-1]
    assert "loss" not in classification_report(probabilities, labels, ["NORM", "ADC", "SCC"]).table()


@pytest.mark.parametrize("seed", range(3))
def test_aggregate_matches_a_loop(seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(4), size=300).astype(np.float32)
    groups = rng.choice([7, -3, 0, 12, 5], size=300)
    ids, means, counts = aggregate(probabilities, groups)
    assert ids.dtype == np.int64 and counts.dtype == np.int64 and means.dtype == np.float64
    np.testing.assert_array_equal(ids, sorted(set(groups.tolist())))
    for g, mean, count in zip(ids, means, counts):
        members = [p for p, group in zip(probabilities.astype(np.float64), groups) if group == g]
        assert count == len(members)
        np.testing.assert_allclose(mean, np.sum(members, axis=0) / len(members), rtol=1e-12)


def test_aggregate_of_nothing_is_empty():
    ids, means, counts = aggregate(np.zeros((0, 3)), [])
    assert ids.shape == (0,) and means.shape == (0, 3) and counts.shape == (0,)


@pytest.mark.parametrize("call,fragment", [
    (lambda: classification_report(np.full((4, 3), 1 / 3), [0, 1, 2, 0, 1], "abc"),
     "labels: shape (5,) does not match probabilities (4, 3)"),
    (lambda: classification_report(np.full((4, 3), 1 / 3), [0, 1, 3, 0], "abc"), "labels: value 3 out of range"),
    (lambda: classification_report(np.full((4, 3), 1 / 3), [0, -1, 2, 0], "abc"), "labels: value -1 out of range"),
    (lambda: classification_report(np.zeros((0, 3)), [], "abc"), "expected at least one sample"),
    (lambda: classification_report(np.ones((4, 1)), [0, 0, 0, 0], "a"), "expected at least 2 classes"),
    (lambda: classification_report(np.full((4, 3), 1 / 3), [0, 1, 2, 0], "ab"), "classes: 2 names"),
    (lambda: classification_report(np.full((4, 3), np.nan), [0, 1, 2, 0], "abc"), "probabilities: contains NaN"),
    (lambda: classification_report(np.full(4, 0.5), [0, 1, 1, 0], "ab"), "probabilities: shape (4,)"),
    (lambda: classification_report(np.full((2, 2), 0.5), [0.0, 1.0], "ab"), "labels: dtype float64"),
    (lambda: confusion_matrix([0, 1], [0, 1, 1], 2), "predictions: shape (3,) does not match labels (2,)"),
    (lambda: confusion_matrix([0, 1], [0, 2], 2), "predictions: value 2 out of range, expected 0..1"),
    (lambda: confusion_matrix([0, 1], [0, 1], 0), "num_classes=0"),
    (lambda: roc_curve([0.1, 0.2], [True]), "positives: shape (1,) does not match scores (2,)"),
    (lambda: roc_curve([], []), "scores: shape (0,)"),
    (lambda: roc_curve([0.1, 0.2], [0, 2]), "positives: dtype"),
    (lambda: auc([0, 1], [0, 0.5, 1]), "tpr: shape (3,) does not match fpr (2,)"),
    (lambda: aggregate(np.ones((3, 2)), [0, 1]), "groups: shape (2,) does not match probabilities (3, 2)"),
])
def test_bad_input_raises(call, fragment):
    with pytest.raises(HistofastError) as caught:
        call()
    assert fragment in str(caught.value)


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def _history():
    return [
        {"epoch": 0, "stage": "patch", "train": {"loss": 1.2, "patch_acc": 0.5, "image_acc": 0.4},
         "val": {"loss": 1.1, "patch_acc": 0.55, "image_acc": None, "slide_acc": 0.5}},
        {"epoch": 1, "stage": "patch", "train": {"loss": 0.9, "patch_acc": 0.6}, "val": None},
        {"epoch": 2, "stage": "patch", "train": {"loss": 0.8, "patch_acc": 0.7, "image_acc": 0.6}},
        {"epoch": 3, "stage": "slide", "train": {"loss": 0.7, "patch_acc": 0.75},
         "val": {"loss": 0.75, "slide_acc": 0.7}},
        {"epoch": 4, "stage": "slide", "train": None, "val": {"loss": 0.6, "patch_acc": 0.8}},
    ]


def test_plots_write_pngs_and_leave_no_temporary_files(tmp_path):
    probabilities, labels = _sample(0, 4, 200)
    labels[labels == 3] = 0
    report = classification_report(probabilities, labels, ["NORM", "ADC", "SCC", "a long class name"])
    plots.plot_history(_history(), tmp_path / "history.png")
    plots.plot_history(_history()[:1], tmp_path / "one.png")
    plots.plot_roc(report, tmp_path / "roc.png", title="val")
    plots.plot_confusion(report, tmp_path / "confusion.png", title="val")
    plots.plot_confusion(classification_report(*_sample(1, 2, 30), ["a", "b"]), tmp_path / "small.png")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["confusion.png", "history.png", "one.png", "roc.png", "small.png"]
    for name in names:
        _assert_png(tmp_path / name)


def test_history_plot_ticks_whole_epochs_and_tells_train_from_validation_apart():
    """One epoch too: its ticks are whole epochs (they were 0.96, 0.98, … for one epoch); train and validation
    lines differ in marker (filled dots, open squares) and line style, and the losses in colour."""
    for history in (_history()[:1], _history()):
        figure = plots.history_figure(history)
        for axes in figure.axes:
            ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
        lines = {line.get_label(): line for axes in figure.axes for line in axes.get_lines()}
        train, val = lines["train loss"], lines["val loss"]
        assert (train.get_marker(), val.get_marker()) == ("o", "s") and val.get_markerfacecolor() == "white"
        assert train.get_color() != val.get_color() and train.get_linestyle() != val.get_linestyle()
        assert lines["train patch_acc"].get_marker() != lines["val patch_acc"].get_marker()


def test_plot_overwrites_and_rejects_an_empty_history(tmp_path):
    path = tmp_path / "history.png"
    path.write_bytes(b"old")
    plots.plot_history(_history(), path)
    _assert_png(path)
    with pytest.raises(HistofastError, match="history: empty"):
        plots.plot_history([], tmp_path / "empty.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.png"]


def test_report_fields():
    report = classification_report(*_sample(0, 2, 50), ["a", "b"])
    assert isinstance(report, Report) and report.loss is None
    assert report.precision.shape == report.recall.shape == report.auc.shape == (2,)
    assert len(report.roc) == 2
