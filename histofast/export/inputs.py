"""Which files a list of SLIDE arguments names: files as given, folders walked recursively.

A folder walk takes every file named like a slide or image (``SLIDE_SUFFIXES``) as one slide, once, and the
multi-file formats OpenSlide reads as one slide each:

- DICOM WSI (``.dcm``): the files of one series (one per level or frame set) in one folder are one slide, opened
  from its first file by name (OpenSlide opens a series from any one of its files). Files are grouped by the
  SeriesInstanceUID of their header (read with pydicom, pixels not read); DICOM files that are not VL Whole Slide
  Microscopy images are skipped with their SOP class;
- MIRAX (``.mrxs``): the data folder of the same stem beside it is part of the slide, not walked;
- Hamamatsu VMS/VMU (``.vms``, ``.vmu``): the side files its index names (images, map, optimisation file) are part
  of the slide, not slides of their own.

Every other file of a walked folder is skipped with its reason (``SlideInputs.skipped``, each also logged), never
silently. Entries named like slides that are not regular files (FIFOs, broken links, folders named ``x.svs`` are
walked as folders) are taken, so that they fail by name with the reason."""
from __future__ import annotations

import configparser
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import HistofastError
from ..io.dicom import WSI_SOP_CLASS

log = logging.getLogger(__name__)

# What a folder walk takes as a slide (OpenSlide's formats and plain images), by lower-case suffix.
SLIDE_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                            ".dcm", ".png", ".jpg", ".jpeg"})
_VMS_SIDE_KEYS = ("imagefile", "mapfile", "optimisationfile", "macroimage")


@dataclass
class SlideInputs:
    """The slides a list of SLIDE arguments names, and every file a folder walk did not take, with the reason."""

    slides: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        self.skipped.append((os.fspath(path), reason))
        log.info("%s: skipped: %s", path, reason)


def find_slides(items: Sequence[str | os.PathLike], *, exclude: Iterable[str | os.PathLike] = ()) -> SlideInputs:
    """The slides named by ``items``: files as given, folders walked recursively (links to folders followed, each
    folder once). ``exclude``: folders never walked (the output folder), reported as skipped when met.

    Raises ``HistofastError`` naming every item that does not exist (nothing else is done then)."""
    missing = [os.fspath(i) for i in items if not os.path.lexists(i)]
    if missing:
        raise HistofastError(f"no such file or folder: {', '.join(missing)}")
    found = SlideInputs()
    excluded = {os.path.realpath(e) for e in exclude}
    walked: set[str] = set()
    series: dict[tuple[str, str], str] = {}  # (folder, SeriesInstanceUID) -> the file the slide is opened from
    taken: dict[str, str] = {}  # real path -> the path it was taken as
    for item in items:
        if os.path.isdir(item):
            _walk(Path(item), found, excluded, walked, series, taken)
        elif Path(item).suffix.lower() == ".dcm":
            _dicom(Path(item), found, series, taken)
        else:
            _take(os.fspath(item), found, taken)
    return found


def _take(path: str, found: SlideInputs, taken: dict[str, str]) -> None:
    """Take ``path`` as a slide unless the same file was taken already (then it is skipped, naming the first)."""
    real = os.path.realpath(path)
    if real in taken:
        found.skip(path, f"the same file as {taken[real]}, already taken")
        return
    taken[real] = path
    found.slides.append(path)


def _walk(folder: Path, found: SlideInputs, excluded: set[str], walked: set[str],
          series: dict[tuple[str, str], str], taken: dict[str, str]) -> None:
    real = os.path.realpath(folder)
    if real in excluded:
        found.skip(folder, "the output folder (--out) is not read as input")
        return
    if real in walked:
        found.skip(folder, "a folder already walked (a link to it, or a link loop)")
        return
    walked.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        found.skip(folder, f"cannot be read ({e.strerror or e})")
        return
    names = {e.name for e in entries}
    parts = _multi_file_parts(folder, entries, names)  # MIRAX data folders, VMS side files: part of a slide
    for entry in entries:
        path = folder / entry.name
        suffix = Path(entry.name).suffix.lower()
        if entry.name in parts:
            log.debug("%s: part of the slide %s", path, parts[entry.name])
        elif _is_dir(entry):
            _walk(path, found, excluded, walked, series, taken)
        elif suffix == ".dcm" and _is_file(entry):
            _dicom(path, found, series, taken)
        elif suffix in SLIDE_SUFFIXES:
            _take(os.fspath(path), found, taken)  # a FIFO or broken link named like a slide fails by name
        else:
            found.skip(path, _not_a_slide(entry, suffix))


def _not_a_slide(entry: os.DirEntry, suffix: str) -> str:
    what = "a file" if _is_file(entry) else "not a regular file"
    named = f"suffix {suffix!r}" if suffix else "no suffix"
    return f"{what} not named like a slide or image ({named}; slides are {', '.join(sorted(SLIDE_SUFFIXES))})"


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _multi_file_parts(folder: Path, entries: list[os.DirEntry], names: set[str]) -> dict[str, str]:
    """Entry name -> the slide file it belongs to: a MIRAX file's data folder, a VMS/VMU index's side files."""
    parts: dict[str, str] = {}
    for entry in entries:
        suffix = Path(entry.name).suffix.lower()
        if suffix == ".mrxs" and Path(entry.name).stem in names:
            parts[Path(entry.name).stem] = entry.name
        elif suffix in (".vms", ".vmu") and _is_file(entry):
            for name in _vms_side_files(folder / entry.name):
                if name in names and name != entry.name:
                    parts[name] = entry.name
    return parts


def _vms_side_files(path: Path) -> list[str]:
    """The file names a Hamamatsu VMS/VMU index names (ImageFile, ImageFile(x,y), MapFile, OptimisationFile,
    MacroImage); none when it cannot be parsed (the slide then fails by name when opened)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(path, encoding="latin-1")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return []
    return [Path(value.strip()).name for section in parser.sections() for key, value in parser.items(section)
            if key.split("(")[0].strip() in _VMS_SIDE_KEYS and value.strip()]


def _dicom(path: Path, found: SlideInputs, series: dict[tuple[str, str], str], taken: dict[str, str]) -> None:
    """Take ``path`` as the slide of its DICOM series, unless a file of that series (in the same folder) was taken;
    skip it when it is DICOM but not a whole-slide image. A file whose header cannot be read is taken, so that it
    fails by name with OpenSlide's reason."""
    try:
        import pydicom
    except ImportError:
        found.skip(path, "a DICOM file: grouping DICOM series into slides needs pydicom (pip install pydicom)")
        return
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesInstanceUID"])
        sop, uid = str(header.SOPClassUID), str(header.SeriesInstanceUID)
    except Exception as e:  # pydicom raises many kinds (InvalidDicomError, AttributeError, struct.error …)
        log.debug("%s: DICOM header not read: %s", path, e)
        _take(os.fspath(path), found, taken)
        return
    if sop != WSI_SOP_CLASS:
        found.skip(path, f"DICOM, but not a VL Whole Slide Microscopy image (SOP class {sop})")
        return
    key = (os.path.realpath(path.parent), uid)
    if key in series:
        log.debug("%s: part of the DICOM series of %s", path, series[key])
        return
    series[key] = os.fspath(path)
    _take(os.fspath(path), found, taken)
