"""The fast path for DICOM whole-slide images: each level's frames are stored tiles, decoded directly
(``histofast.io.tiles``), as an SVS's are.

A DICOM WSI series is one slide: the VL Whole Slide Microscopy instances of one SeriesInstanceUID in the opened
file's folder, as OpenSlide reads it (OpenSlide opens the series too, and supplies the metadata). pydicom parses
each instance's header (pixels not read) and the positions of its encapsulated frames (``parse_fragments``);
the frames are then read with ``os.pread``, like TIFF tiles. Served directly: levels (ImageType ``VOLUME``) of
JPEG Baseline frames, RGB or YBR_FULL_422, one fragment per frame, TILED_FULL (row-major, across the members of
a concatenation by their ConcatenationFrameOffsetNumber) or TILED_SPARSE (placed by each frame's
PlanePositionSlideSequence; a missing frame reads white, as OpenSlide's transparent pixels on white); a level
also needs one of its tiles to equal OpenSlide's pixels. Anything else is read through OpenSlide."""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Sequence

import numpy as np

from ..errors import SlideError
from ..renamed import renamed_keyword
from .openslide_slide import OpenSlideSlide
from .remote import RemoteFile, SlideURL, is_url, listing
from .tiles import JPEG, RGB, YCBCR, Metadata, Reader, StoredTileSlide

log = logging.getLogger("histofast")

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PHOTOMETRIC = {"RGB": RGB, "YBR_FULL_422": YCBCR}  # as libjpeg is told to read the frames, as OpenSlide does
HEADER_TAGS = ["SOPClassUID", "SeriesInstanceUID", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows",
               "Columns", "Rows", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "PlanarConfiguration",
               "PhotometricInterpretation", "DimensionOrganizationType", "ConcatenationFrameOffsetNumber",
               "TotalPixelMatrixFocalPlanes", "NumberOfOpticalPaths", "PerFrameFunctionalGroupsSequence",
               "SharedFunctionalGroupsSequence", "OpticalPathSequence", "ExtendedOffsetTable",
               "ExtendedOffsetTableLengths"]


class Instance(NamedTuple):
    """An instance of the series: its reader and file (``index`` into the slide's), its header (pixels not read),
    the (width, height) of its level, and (offset, byte count) of each of its frames (None: not one this path reads).
    """

    index: int
    header: Any
    dims: tuple[int, int]
    frames: list[tuple[int, int]] | None


@dataclass
class DicomLevel:
    """One level's stored tiles, as ``histofast.io.tiles`` reads them: per tile (row-major) the instance file that
    holds it (``files``, an index into the slide's instances) and its frame there (``frames``, 1-based, as DICOM
    counts them), its byte offset and count (0: no frame, white)."""

    tilewidth: int
    tilelength: int
    imagewidth: int
    imagelength: int
    photometric: int
    dataoffsets: np.ndarray
    databytecounts: np.ndarray
    files: np.ndarray
    frames: np.ndarray
    compression: int = JPEG
    jpegtables: bytes | None = None
    is_jfif: bool = False


class DicomSlide(StoredTileSlide):
    """A DICOM WSI series whose levels are decoded directly where they match OpenSlide's pixels; or a remote one
    (every level decoded directly, its metadata parsed here as OpenSlide would give it)."""

    backend = "dicom"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, *, files: Sequence[str] | None = None,
                 **deprecated: Any) -> None:
        """``path``: an instance of the series (its folder holds the others); ``files``: a remote series' instances
        (URLs; by default the objects beside ``path``, where the server lists folders)."""
        threads = renamed_keyword(deprecated, "DicomSlide", "workers", "threads", threads)
        if deprecated:
            raise TypeError(f"DicomSlide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        self._readers: list[Reader | RemoteFile] = []
        self._files: list[Path | SlideURL] = []  # the instances the readers read, in order
        remote = is_url(path)
        openslide = None if remote else OpenSlideSlide(path, threads)
        try:
            if remote:
                url = SlideURL(path)
                folder = url.endswith("/")
                instances = self._instances(None if folder else url, [SlideURL(f) for f in files] if files else
                                            listing(url if folder else url.parent), url)
                super().__init__(url, threads, metadata=_metadata(url, instances))
            else:
                super().__init__(path, threads, openslide=openslide)
                instances = self._instances(self.path, sorted(p for p in self.path.parent.iterdir() if p.is_file()),
                                            self.path)
            self._serve(self._levels(instances), " (not JPEG Baseline frames, one fragment each)")
        except BaseException:
            for reader in self._readers:
                reader.close()
            if openslide is not None:
                openslide.close()
            raise

    def _instances(self, opened: Path | SlideURL | None, files: list, where: Path | SlideURL) -> list[Instance]:
        """The VL Whole Slide Microscopy instances among ``files`` in the series of ``opened`` (OpenSlide skips the
        others too), each with a reader of its file; ``opened`` None: ``files`` must hold one series (``where``: the
        slide, as errors name it)."""
        import pydicom

        uid, others = None, set()
        found = []
        for file in ([opened] if opened else []) + [f for f in files if f != opened]:
            reader = RemoteFile(file) if isinstance(file, SlideURL) else Reader(os.fspath(file))
            with reader.open() as f:
                try:
                    header = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=HEADER_TAGS)  # f: at the frames
                    wsi = str(header.SOPClassUID) == WSI_SOP_CLASS
                    uid = uid or (str(header.SeriesInstanceUID) if wsi else None)
                    ours = wsi and str(header.SeriesInstanceUID) == uid
                    others |= {str(header.SeriesInstanceUID)} if wsi and not ours else set()
                    dims = (int(header.TotalPixelMatrixColumns), int(header.TotalPixelMatrixRows))
                    frames = _frames(f, header) if ours and _direct(header) else None
                except Exception:  # not DICOM, or not this series' images: OpenSlide skips it too
                    if file == opened:
                        raise SlideError(opened, "not a DICOM WSI instance") from None
                    ours = False
            if ours:
                found.append(Instance(len(self._readers), header, dims, frames))
                self._readers.append(reader)
                self._files.append(file)
            else:
                reader.close()
        if opened is None and (others or not found):
            raise SlideError(where, f"holds {len(others) + 1} DICOM WSI series: open one instance of the one you mean"
                             if others else "holds no DICOM WSI instance")
        return found

    def _levels(self, instances: list[Instance]) -> dict[tuple[int, int], DicomLevel]:
        """The levels (``VOLUME`` images) this path can serve, by (width, height)."""
        parts: dict[tuple[int, int], list[Instance]] = {}
        for instance in instances:
            if _image_type(instance.header) == "VOLUME":  # every instance of a level, so that one this path cannot
                parts.setdefault(instance.dims, []).append(instance)  # read leaves it to OpenSlide
        levels = {}
        for dims, members in parts.items():
            level = self._level(dims, members)
            if level is not None:
                levels[dims] = level
        return levels

    def _level(self, dims: tuple[int, int],
               instances: list[Instance]) -> DicomLevel | None:
        """The tile table of a level from its instances and their frames, or None where an instance is not one this
        path reads (OpenSlide reads that level)."""
        first = instances[0].header
        tw, th, (width, height) = int(first.Columns), int(first.Rows), dims
        across, down = -(-width // tw), -(-height // th)
        if any(instance.frames is None for instance in instances):
            log.debug("%s: an instance of level %s×%s is not JPEG Baseline frames of one fragment each: OpenSlide "
                      "reads that level", self.path, width, height)
            return None
        if any((int(h.Columns), int(h.Rows), str(h.PhotometricInterpretation)) !=
               (tw, th, str(first.PhotometricInterpretation)) for h in (i.header for i in instances)):
            return None
        offsets, counts = np.zeros(across * down, np.int64), np.zeros(across * down, np.int64)
        files, numbers = np.full(across * down, -1, np.int32), np.zeros(across * down, np.int32)
        for index, header, _, frames in instances:
            if header.get("DimensionOrganizationType", "TILED_FULL") == "TILED_SPARSE":
                places = [(int(p.RowPositionInTotalImagePixelMatrix) - 1) // th * across
                          + (int(p.ColumnPositionInTotalImagePixelMatrix) - 1) // tw
                          for p in (f.PlanePositionSlideSequence[0] for f in header.PerFrameFunctionalGroupsSequence)]
            else:
                start = int(header.get("ConcatenationFrameOffsetNumber", 0))
                places = list(range(start, start + len(frames)))
            if max(places, default=0) >= across * down or len(places) != len(frames):
                return None
            for number, (place, (offset, count)) in enumerate(zip(places, frames), 1):
                offsets[place], counts[place] = offset, count
                files[place], numbers[place] = index, number
        return DicomLevel(tw, th, width, height, PHOTOMETRIC[str(first.PhotometricInterpretation)], offsets,
                          counts, files, numbers)

    def _reader_of(self, page: DicomLevel, index: int) -> Reader | RemoteFile:
        return self._readers[page.files[index]]

    def _tile_name(self, page: DicomLevel, level: int, index: int) -> str:
        return f"level {level} tile {index} (frame {page.frames[index]} of {self._files[page.files[index]].name})"

    def close(self) -> None:
        super().close()
        for reader in self._readers:
            reader.close()
        self._readers = []


def _direct(header: Any) -> bool:
    """Whether an instance's frames are what this path decodes: a volume level of 8-bit, 3-sample JPEG Baseline
    frames, one focal plane and optical path, interleaved, RGB or YBR_FULL_422 (the checks OpenSlide makes)."""
    image_type = list(header.get("ImageType", []))
    return (len(image_type) > 2 and image_type[2] == "VOLUME"
            and str(header.file_meta.TransferSyntaxUID) == JPEG_BASELINE
            and int(header.get("SamplesPerPixel", 0)) == 3 and int(header.get("BitsAllocated", 0)) == 8
            and int(header.get("PlanarConfiguration", 0)) == 0
            and str(header.get("PhotometricInterpretation", "")) in PHOTOMETRIC
            and int(header.get("TotalPixelMatrixFocalPlanes", 1)) == 1
            and int(header.get("NumberOfOpticalPaths", 1)) == 1)


def _frames(f: BinaryIO, header: Any) -> list[tuple[int, int]] | None:
    """(offset, byte count) of each frame of an instance (``f``: the file, where pydicom's header read stopped, at the
    Pixel Data element; the frames are not read), one fragment each; None where that is not so (OpenSlide reads that
    level).

    The frames' places come from the Extended Offset Table, or the Basic Offset Table, where they have one entry per
    frame: a remote file's frames are then found without reading them (a frame whose entry spans more than one
    fragment then fails to decode, as corrupt); else from pydicom's walk over the fragments."""
    from pydicom import encaps

    count = int(header.NumberOfFrames)
    f.seek(12, os.SEEK_CUR)  # the element's tag, VR, reserved bytes and undefined length: the Basic Offset Table next
    basic = encaps.parse_basic_offsets(f)
    first = f.tell()  # the first fragment's item
    extended = header.get("ExtendedOffsetTable")
    if extended is not None and header.get("ExtendedOffsetTableLengths") is not None:
        starts = np.frombuffer(extended, "<u8").tolist()
        lengths = np.frombuffer(header.ExtendedOffsetTableLengths, "<u8").tolist()
        if len(starts) == len(lengths) == count:
            return [(first + start + 8, length) for start, length in zip(starts, lengths)]
    if len(basic) == count and count:
        starts = [first + start for start in basic]
        f.seek(starts[-1])  # the last frame's length: its item's
        group, element, length = struct.unpack("<HHI", f.read(8))
        if (group, element) != (0xFFFE, 0xE000):
            return None
        return [(s + 8, e - s - 8) for s, e in zip(starts, starts[1:])] + [(starts[-1] + 8, length)]
    n, starts = encaps.parse_fragments(f)
    if n != count:
        return None
    frames = []
    for start in starts:  # each fragment: an item tag, its length, the frame's bytes
        f.seek(start + 4)
        (length,) = struct.unpack("<I", f.read(4))
        frames.append((start + 8, length))
    return frames


def _image_type(header: Any) -> str:
    """The third value of an instance's ImageType: "VOLUME" for a level, "LABEL", "OVERVIEW", "THUMBNAIL"."""
    image_type = list(header.get("ImageType", []))
    return str(image_type[2]) if len(image_type) > 2 else ""


def _metadata(url: SlideURL, instances: list[Instance]) -> Metadata:
    """A remote series' levels and properties as OpenSlide gives them for a local copy: the levels' sizes, widest
    first, downsamples as the mean of the width and height ratios to level 0, ``openslide.mpp-x``/``-y`` from level
    0's PixelSpacing (mm, row then column) and ``openslide.objective-power`` from its ObjectiveLensPower."""
    firsts: dict[tuple[int, int], Instance] = {}
    for instance in instances:
        if _image_type(instance.header) == "VOLUME":
            firsts.setdefault(instance.dims, instance)
    levels = sorted(firsts.values(), key=lambda i: -i.dims[0])
    if not levels:
        raise SlideError(url, "no level (a VOLUME image) in this DICOM series")
    header = levels[0].header
    properties = {"openslide.vendor": "dicom"}
    try:
        spacing = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        properties["openslide.mpp-y"], properties["openslide.mpp-x"] = (repr(float(v) * 1000) for v in spacing)
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    try:
        properties["openslide.objective-power"] = repr(float(header.OpticalPathSequence[0].ObjectiveLensPower))
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    for level, instance in enumerate(levels):
        properties[f"openslide.level[{level}].tile-width"] = str(int(instance.header.Columns))
        properties[f"openslide.level[{level}].tile-height"] = str(int(instance.header.Rows))
    (w0, h0) = levels[0].dims
    return Metadata([i.dims for i in levels], [(w0 / w + h0 / h) / 2 for w, h in (i.dims for i in levels)], properties)


def series_file(folder: Path) -> Path:
    """The file a folder holding one DICOM WSI series is opened from (the series' first file by name): how
    ``open_slide`` takes such a folder as the slide.

    Raises:
        SlideError: the folder holds no DICOM WSI series, or several (naming a file of each)."""
    import pydicom

    found: dict[str, Path] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesInstanceUID"])
            if str(header.SOPClassUID) == WSI_SOP_CLASS:
                found.setdefault(str(header.SeriesInstanceUID), file)
        except Exception:  # not DICOM (pydicom raises many kinds), or without those tags
            continue
    if len(found) != 1:
        raise SlideError(folder, "is a directory, not a slide file (nor a folder of one DICOM WSI series)"
                         if not found else f"is a directory holding {len(found)} DICOM WSI series: open one file "
                         f"of the one you mean ({', '.join(p.name for p in found.values())})")
    return next(iter(found.values()))
