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
from typing import Any, BinaryIO

import numpy as np

from ..errors import SlideError
from ..renamed import renamed_keyword
from .tiles import JPEG, RGB, YCBCR, Reader, StoredTileSlide

log = logging.getLogger("histofast")

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PHOTOMETRIC = {"RGB": RGB, "YBR_FULL_422": YCBCR}  # as libjpeg is told to read the frames, as OpenSlide does
HEADER_TAGS = ["SOPClassUID", "SeriesInstanceUID", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows",
               "Columns", "Rows", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "PlanarConfiguration",
               "PhotometricInterpretation", "DimensionOrganizationType", "ConcatenationFrameOffsetNumber",
               "TotalPixelMatrixFocalPlanes", "NumberOfOpticalPaths", "PerFrameFunctionalGroupsSequence"]


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
    """A DICOM WSI series whose levels are decoded directly where they match OpenSlide's pixels."""

    backend = "dicom"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, **deprecated: Any) -> None:
        threads = renamed_keyword(deprecated, "DicomSlide", "workers", "threads", threads)
        if deprecated:
            raise TypeError(f"DicomSlide() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        super().__init__(path, threads)
        self._readers: list[Reader] = []
        self._files: list[Path] = []  # the instances the readers read, in order
        try:
            self._serve(self._levels())
        except BaseException:
            self.close()
            raise

    def _levels(self) -> dict[tuple[int, int], DicomLevel]:
        """The levels of the opened file's series that this path can serve, by (width, height)."""
        import pydicom

        series = pydicom.dcmread(self.path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        uid = str(series.SeriesInstanceUID)
        parts: dict[tuple[int, int], list[tuple[Path, Any, list[tuple[int, int]] | None]]] = {}
        for file in sorted(p for p in self.path.parent.iterdir() if p.is_file()):
            with open(file, "rb") as f:
                try:
                    header = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=HEADER_TAGS)  # f: at the frames
                    ours = str(header.SOPClassUID) == WSI_SOP_CLASS and str(header.SeriesInstanceUID) == uid
                    dims = (int(header.TotalPixelMatrixColumns), int(header.TotalPixelMatrixRows))
                except Exception:  # not DICOM, or not this series' images: OpenSlide skips it too
                    continue
                if ours:  # every instance of a level, so that one this path cannot read leaves it to OpenSlide
                    parts.setdefault(dims, []).append(
                        (file, header, _frames(f, int(header.NumberOfFrames)) if _direct(header) else None))
        levels = {}
        for dims, instances in parts.items():
            level = self._level(dims, instances)
            if level is not None:
                levels[dims] = level
        return levels

    def _level(self, dims: tuple[int, int],
               instances: list[tuple[Path, Any, list[tuple[int, int]] | None]]) -> DicomLevel | None:
        """The tile table of a level from its instances and their frames, or None where an instance is not one this
        path reads (OpenSlide reads that level)."""
        first = instances[0][1]
        tw, th, (width, height) = int(first.Columns), int(first.Rows), dims
        across, down = -(-width // tw), -(-height // th)
        if any(frames is None for *_, frames in instances):
            log.debug("%s: an instance of level %s×%s is not JPEG Baseline frames of one fragment each: OpenSlide "
                      "reads that level", self.path, width, height)
            return None
        if any((int(h.Columns), int(h.Rows), str(h.PhotometricInterpretation)) !=
               (tw, th, str(first.PhotometricInterpretation)) for _, h, _ in instances):
            return None
        offsets, counts = np.zeros(across * down, np.int64), np.zeros(across * down, np.int64)
        files, numbers = np.full(across * down, -1, np.int32), np.zeros(across * down, np.int32)
        for path, header, frames in instances:
            if header.get("DimensionOrganizationType", "TILED_FULL") == "TILED_SPARSE":
                places = [(int(p.RowPositionInTotalImagePixelMatrix) - 1) // th * across
                          + (int(p.ColumnPositionInTotalImagePixelMatrix) - 1) // tw
                          for p in (f.PlanePositionSlideSequence[0] for f in header.PerFrameFunctionalGroupsSequence)]
            else:
                start = int(header.get("ConcatenationFrameOffsetNumber", 0))
                places = list(range(start, start + len(frames)))
            if max(places, default=0) >= across * down or len(places) != len(frames):
                return None
            self._readers.append(Reader(os.fspath(path)))
            self._files.append(path)
            for number, (place, (offset, count)) in enumerate(zip(places, frames), 1):
                offsets[place], counts[place] = offset, count
                files[place], numbers[place] = len(self._files) - 1, number
        return DicomLevel(tw, th, width, height, PHOTOMETRIC[str(first.PhotometricInterpretation)], offsets,
                          counts, files, numbers)

    def _reader_of(self, page: DicomLevel, index: int) -> Reader:
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


def _frames(f: BinaryIO, count: int) -> list[tuple[int, int]] | None:
    """(offset, byte count) of each frame of an instance, from pydicom's parse of its encapsulated pixel data
    (``f``: the file, where pydicom's header read stopped, at the Pixel Data element; the frames are not read);
    None unless it holds exactly ``count`` fragments (OpenSlide reads that level)."""
    from pydicom import encaps

    f.seek(12, os.SEEK_CUR)  # the element's tag, VR, reserved bytes and undefined length: the Basic Offset Table next
    encaps.parse_basic_offsets(f)
    n, starts = encaps.parse_fragments(f)
    if n != count:
        return None
    frames = []
    for start in starts:  # each fragment: an item tag, its length, the frame's bytes
        f.seek(start + 4)
        (length,) = struct.unpack("<I", f.read(4))
        frames.append((start + 8, length))
    return frames


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
