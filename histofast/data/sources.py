"""Where training samples come from: slide lists, manifest CSVs and class folders, with labels, and
``split``, which deals patients (never their slides) to train/validation/test."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import HistofastError
from ..io import file_problem
from ..utils.atomic import atomic_open

# The columns of a slide manifest CSV (path relative to the CSV; label and patient optional).
SLIDE_MANIFEST_FIELDS = ("path", "label", "patient")
NO_LABEL = -100  # unlabelled (and padding) samples: cross_entropy's default ignore_index


@dataclass(frozen=True)
class SlideSource:
    """One slide (or image) of a dataset.

    Attributes:
        path: the file.
        label: class name, or None when unlabelled.
        patient: patient (or any grouping) id, or None when unknown.
    """

    path: str
    label: str | None = None
    patient: str | None = None


def read_manifest(path: str | os.PathLike) -> list[SlideSource]:
    """Read a manifest CSV with columns ``path``, ``label`` (optional) and ``patient`` (optional).

    Relative paths are relative to the manifest's folder (as ``histofast.synth.write_region_dataset``
    writes them); an empty label or patient reads as None."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            fields = rows[0].keys() if rows else ()
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise HistofastError(f"manifest {path}: cannot be read ({e})") from None
    if "path" not in fields:
        raise HistofastError(f"manifest {path}: no 'path' column (expected columns path[,label][,patient])")
    return [SlideSource(os.fspath(path.parent / row["path"]), row.get("label") or None, row.get("patient") or None)
            for row in rows]


def write_manifest(items: Sequence[SlideSource], path: str | os.PathLike) -> None:
    """Write ``items`` as a manifest CSV (absolute paths), atomically."""
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(SLIDE_MANIFEST_FIELDS)
        for item in items:
            w.writerow([os.path.abspath(item.path), item.label or "", item.patient or ""])


def class_folders(root: str | os.PathLike) -> list[SlideSource]:
    """The files of a class-folder dataset: ``root/<class>/<file>``, labelled by folder name.

    A folder without subfolders is a plain list of unlabelled files. Hidden files and CSVs are skipped."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        return [SlideSource(os.fspath(p)) for p in _files(root)]
    return [SlideSource(os.fspath(p), folder.name) for folder in folders for p in _files(folder)]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".csv")


def resolve(source: Any, labels: Sequence[Any] | None = None) -> list[SlideSource]:
    """Turn a ``Pipeline`` source into ``SlideSource``s.

    Args:
        source: a manifest CSV path, a class-folder directory, one slide path, or a sequence of
            slide paths / ``SlideSource``s.
        labels: class names for a sequence of paths, one per path.
    Raises:
        HistofastError: the source is empty, or ``labels`` does not match it.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            items = class_folders(path)
        elif path.suffix.lower() == ".csv":
            items = read_manifest(path)
        else:
            items = [SlideSource(os.fspath(path))]
    elif isinstance(source, Sequence):
        items = [s if isinstance(s, SlideSource) else SlideSource(os.fspath(s)) for s in source]
    else:
        raise TypeError("source: expected a path, a manifest CSV, a folder or a list of paths, "
                        f"got {type(source).__name__}")
    if not items:
        raise HistofastError(f"source={_short(source)}: holds no slides")
    if labels is not None:
        if len(labels) != len(items):
            raise HistofastError(f"labels: {len(labels)} labels for {len(items)} slides")
        items = [SlideSource(s.path, None if lab is None else str(lab), s.patient) for s, lab in zip(items, labels)]
    problems = [f"{why}: {s.path}" for s in items if (why := file_problem(s.path))]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise HistofastError(f"source: {'; '.join(problems[:3])}{more}")
    return items


def class_index(items: Sequence[SlideSource], classes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names and each item's class index (``NO_LABEL`` for unlabelled items).

    Default classes: the sorted label names (as torchvision's ``ImageFolder``)."""
    names = sorted({s.label for s in items if s.label is not None})
    if classes is None:
        classes = names
    else:
        classes = [str(c) for c in classes]
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise HistofastError(f"labels {unknown} match none of classes={classes}")
    lookup = {c: k for k, c in enumerate(classes)}
    return list(classes), np.array([NO_LABEL if s.label is None else lookup[s.label] for s in items], np.int64)


def split(
    manifest: Any,
    by: str = "patient",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> list[list[SlideSource]]:
    """Deal groups of slides (patients by default) to splits, so that no group is in two splits.

    Groups are dealt per class (a group's class is its most common label), so every split gets
    its share of each class: ``round(fraction × groups of that class)`` by largest remainder, at
    least one group for every non-zero fraction while the class has groups enough.

    Args:
        manifest: anything ``Pipeline`` takes as a source (a manifest CSV, a class-folder directory,
            a list of ``SlideSource``s).
        by: "patient", or "slide" (every slide its own group).
        fractions: the splits' shares of each class's groups, non-negative, summing to 1.
        seed: the same seed deals the same groups.
    Returns:
        One list of ``SlideSource``s per fraction, each usable as a ``Pipeline`` source
        (``write_manifest`` saves one).
    """
    if by not in ("patient", "slide"):
        raise HistofastError(f"by={by!r}: expected 'patient' or 'slide'")
    shares = np.asarray(fractions, np.float64)
    if shares.ndim != 1 or len(shares) == 0 or (shares < 0).any() or abs(shares.sum() - 1) > 1e-6:
        raise HistofastError(f"fractions={tuple(fractions)}: must be non-negative and sum to 1")
    items = resolve(manifest)
    if by == "patient":
        missing = [s.path for s in items if s.patient is None]
        if missing:
            raise HistofastError(f"split(by='patient'): {len(missing)} slides have no patient id "
                                 f"(first: {missing[0]}); add a 'patient' column to the manifest or use by='slide'")
    groups: dict[str, list[SlideSource]] = {}
    for s in items:
        groups.setdefault(s.patient if by == "patient" else s.path, []).append(s)
    by_class: dict[str, list[str]] = {}
    for key, members in groups.items():
        labels = [s.label or "" for s in members]
        by_class.setdefault(max(sorted(set(labels)), key=labels.count), []).append(key)
    rng = np.random.default_rng(seed)
    out: list[list[SlideSource]] = [[] for _ in shares]
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        keys = [keys[k] for k in rng.permutation(len(keys))]
        start = 0
        for k, n in enumerate(_deal(len(keys), shares)):
            for key in keys[start : start + n]:
                out[k].extend(groups[key])
            start += n
    return out


def _deal(n: int, shares: np.ndarray) -> list[int]:
    """Split ``n`` groups by ``shares`` (largest remainder), non-zero shares first getting one each."""
    exact = n * shares
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    for k in np.flatnonzero((shares > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    return counts.tolist()


def _short(source: Any) -> str:
    text = repr(source)
    return text if len(text) <= 80 else text[:77] + "..."
