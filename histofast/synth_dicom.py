"""Synthetic DICOM whole-slide images: the pixels of ``synth.write_slide`` as a DICOM WSI series.

``write_dicom_slide`` writes a series of VL Whole Slide Microscopy Image Storage instances (SOP class
1.2.840.10008.5.1.4.1.1.77.1.6), one file per pyramid level (or several: a DICOM concatenation), whose frames
are the very JPEG bytes of the tiles ``synth.write_slide`` stores in its SVS for the same arguments. OpenSlide
(4.0.1, libdicom) opens the series from any one of its files and reads the same pixels as from the SVS, bit
for bit. What OpenSlide 4.0.1 (with libdicom 1.3.0, as openslide-bin bundles them) needs and does, read in its
``src/openslide-vendor-dicom.c`` and checked by ``tests/io/test_synth_dicom.py``:

- a file belongs to the slide if its file meta's MediaStorageSOPClassUID is the WSI class and its
  SeriesInstanceUID is the opened file's (every file of the folder is tried; others are skipped silently);
- every level (ImageType value 3 ``VOLUME``) is found by its TotalPixelMatrixColumns/Rows; two instances of
  one size are one level only as members of one concatenation (same ConcatenationUID, distinct
  InConcatenationNumber, optional InConcatenationTotalNumber checked), else the series is refused;
- the format checks: transfer syntax JPEG Baseline (1.2.840.10008.1.2.4.50), PlanarConfiguration 0,
  BitsAllocated/BitsStored 8, HighBit 7, SamplesPerPixel 3, PixelRepresentation 0, TotalPixelMatrixFocalPlanes
  1 when present, SOPInstanceUID, SeriesInstanceUID, and PhotometricInterpretation ``RGB`` (libjpeg told the
  data are RGB: our tiles, RGB-coded with an Adobe marker, decode as in the SVS) or ``YBR_FULL_422`` (libjpeg
  told YCbCr: these tiles would decode to wrong colours);
- TILED_FULL frames (row-major, ConcatenationFrameOffsetNumber counting the frames of earlier members) or
  TILED_SPARSE frames placed by the 1-based ColumnPosition/RowPositionInTotalImagePixelMatrix of each frame's
  PlanePositionSlideSequence (aligned on tile boundaries), in any order, some possibly absent: OpenSlide then
  paints nothing there, so ``read_region`` gives transparent pixels (RGBA 0, 0, 0, 0);
- ``openslide.mpp-x``/``-y`` come from level 0's SharedFunctionalGroupsSequence PixelMeasuresSequence
  PixelSpacing (mm, row then column spacing), ``openslide.objective-power`` from OpticalPathSequence
  ObjectiveLensPower.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import tifffile
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.valuerep import format_number_as_ds

from .checks import check_count
from .errors import HistofastError
from .io.dicom import JPEG_BASELINE, WSI_SOP_CLASS
from .synth import _check_slide_args, _key, _level_sizes, write_slide
from .utils.atomic import atomic_path

_UID_SOURCE = "histofast.synth_dicom"


@dataclass(frozen=True)
class _Level:
    """One pyramid level of the SVS: its size and its stored JPEG tiles in row-major order."""

    width: int
    height: int
    tiles_across: int
    tiles_down: int
    tiles: list[bytes]


def _svs_levels(svs: pathlib.Path) -> list[_Level]:
    """The tiled pages of an SVS written by ``write_slide`` (the stripped thumbnail is not a level)."""
    levels = []
    with tifffile.TiffFile(svs) as tif, open(svs, "rb") as fh, \
            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for page in tif.pages:
            if not page.is_tiled:
                continue
            across = -(-page.imagewidth // page.tilewidth)
            down = -(-page.imagelength // page.tilelength)
            tiles = [data[o:o + n] for o, n in zip(page.dataoffsets, page.databytecounts)]
            if len(tiles) != across * down:
                raise HistofastError(f"{svs}: {len(tiles)} tiles in a {across}×{down} page")
            levels.append(_Level(page.imagewidth, page.imagelength, across, down, tiles))
    return levels


def _tile_set(items: Iterable[Sequence[int]], name: str, sizes: list[tuple[int, int]],
              tile: int) -> set[tuple[int, int, int]]:
    """`items` as a set of (level, tile_x, tile_y), each checked against the levels' tile counts."""
    out = set()
    for item in items:
        try:
            level, tx, ty = (int(v) for v in item)
        except (TypeError, ValueError):
            raise HistofastError(f"{name}=: {item!r} is not a (level, tile_x, tile_y) triple") from None
        if not 0 <= level < len(sizes):
            raise HistofastError(f"{name}=: level {level} not in 0..{len(sizes) - 1}")
        across, down = -(-sizes[level][0] // tile), -(-sizes[level][1] // tile)
        if not (0 <= tx < across and 0 <= ty < down):
            raise HistofastError(f"{name}=: tile ({tx}, {ty}) of level {level} outside its {across}×{down} tiles")
        out.add((level, tx, ty))
    return out


def write_dicom_slide(
    folder: str | os.PathLike,
    width: int,
    height: int,
    seed: int = 0,
    tissue_fraction: float = 0.5,
    *,
    tile_size: int = 256,
    quality: int = 90,
    mpp: float = 0.25,
    magnification: float = 40,
    min_level_size: int = 1024,
    frames_per_instance: int | None = None,
    sparse: bool = False,
    missing: Iterable[Sequence[int]] = (),
    corrupt: Iterable[Sequence[int]] = (),
    threads: int | None = None,
) -> pathlib.Path:
    """Write a DICOM WSI series with the pixels of ``synth.write_slide`` for the same arguments.

    The SVS is written to a temporary folder and its stored tiles (complete baseline JPEGs, RGB-coded, no
    YCbCr transform) become the frames, byte for byte: JPEG Baseline transfer syntax, PhotometricInterpretation
    RGB, encapsulated pixel data with a Basic Offset Table, frames of tile_size × tile_size (edge tiles padded
    as in the SVS; readers clip them to TotalPixelMatrixColumns/Rows). One instance per level, ``level<L>.dcm``,
    or with `frames_per_instance` a level of more frames split into a concatenation, ``level<L>_<k>.dcm``
    (k from 1, zero-padded). All instances share StudyInstanceUID, SeriesInstanceUID and FrameOfReferenceUID;
    every UID is derived from the arguments, so the same arguments give the same files. Each file is written
    atomically. OpenSlide opens the series from any of its files (it reads the folder for the others; files of
    other series in the folder are ignored).

    Args:
        folder: where the files go (created if missing).
        width, height, seed, tissue_fraction, tile_size, quality, mpp, magnification, min_level_size, threads:
            as for ``synth.write_slide``.
        frames_per_instance: at most this many frames per file; a level with more frames is written as a
            concatenation (ConcatenationUID, ConcatenationFrameOffsetNumber, InConcatenationNumber,
            InConcatenationTotalNumber, SOPInstanceUIDOfConcatenationSource). Default: one file per level.
        sparse: DimensionOrganizationType TILED_SPARSE: every frame carries its position
            (PerFrameFunctionalGroupsSequence / PlanePositionSlideSequence), and the frames of each level are
            stored in a shuffled order (a function of `seed`), so a reader must use the positions.
        missing: (level, tile_x, tile_y) tiles left out (``sparse`` only): OpenSlide reads them transparent.
        corrupt: (level, tile_x, tile_y) tiles whose JPEG data are cut to half their length (the frame keeps
            its place): OpenSlide fails on them ("Premature end of JPEG file"), for fault tests.
    Returns:
        The path of level 0's (first) file.
    """
    _check_slide_args(width, height, tissue_fraction, tile_size, quality, mpp, magnification, min_level_size,
                      threads)
    if frames_per_instance is not None:
        check_count(frames_per_instance, "frames_per_instance")
    sizes = _level_sizes(width, height, min_level_size)
    missing_set = _tile_set(missing, "missing", sizes, tile_size)
    corrupt_set = _tile_set(corrupt, "corrupt", sizes, tile_size)
    if missing_set and not sparse:
        raise HistofastError("missing=: tiles can be left out only with sparse=True (TILED_FULL has every frame)")
    for index, (w, h) in enumerate(sizes):
        if sum(lv == index for lv, _, _ in missing_set) == -(-w // tile_size) * -(-h // tile_size):
            raise HistofastError(f"missing=: every tile of level {index} is left out (an instance needs a frame)")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="histofast-dicom-") as tmp:
        svs = write_slide(pathlib.Path(tmp) / "slide.svs", width, height, seed, tissue_fraction,
                          tile_size=tile_size, quality=quality, mpp=mpp, magnification=magnification,
                          min_level_size=min_level_size, threads=threads)
        levels = _svs_levels(svs)
    if [(lv.width, lv.height) for lv in levels] != sizes:
        raise HistofastError(f"the SVS has levels {[(lv.width, lv.height) for lv in levels]}, expected {sizes}")

    arguments = (_UID_SOURCE, width, height, seed, tissue_fraction, tile_size, quality, mpp, magnification,
                 min_level_size, frames_per_instance, sparse, sorted(missing_set), sorted(corrupt_set))
    series = _Series(repr(arguments), width, height, tile_size, mpp, magnification, sparse)
    first = None
    for index, level in enumerate(levels):
        # (tile_x, tile_y) of each frame, in the order stored
        order = [(tx, ty) for ty in range(level.tiles_down) for tx in range(level.tiles_across)]
        if sparse:
            permutation = np.random.default_rng(_key(seed, 7, index)).permutation(len(order))
            order = [order[k] for k in permutation if (index, *order[k]) not in missing_set]
        frames = []
        for tx, ty in order:
            data = level.tiles[ty * level.tiles_across + tx]
            frames.append(data[:len(data) // 2] if (index, tx, ty) in corrupt_set else data)
        per = frames_per_instance or len(frames)
        starts = range(0, len(frames), per)
        digits = len(str(len(starts)))
        for number, start in enumerate(starts, 1):
            name = f"level{index}.dcm" if len(starts) == 1 else f"level{index}_{number:0{digits}d}.dcm"
            stop = min(start + per, len(frames))
            dataset = series.instance(index, level, order[start:stop], frames[start:stop],
                                      (number, len(starts), start) if len(starts) > 1 else None)
            with atomic_path(folder / name) as path:
                dataset.save_as(path, enforce_file_format=True)
            first = first or folder / name
    assert first is not None
    return first


def _ds(value: float) -> str:
    """A decimal string (DS): at most 16 characters."""
    return format_number_as_ds(float(value))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@dataclass(frozen=True)
class _Series:
    """What every instance of one series shares; ``instance`` makes each."""

    source: str  # the arguments, as text: the UIDs are a function of them
    width: int
    height: int
    tile_size: int
    mpp: float
    magnification: float
    sparse: bool

    def uid(self, *parts: object) -> str:
        """A UID under 2.25 (a 128-bit number) hashed from the arguments and `parts`: the same every run.
        (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the sources: a random UUID.)"""
        digest = hashlib.sha256(repr((self.source, *parts)).encode()).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def instance(self, index: int, level: _Level, order: list[tuple[int, int]], frames: list[bytes],
                 concatenation: tuple[int, int, int] | None) -> FileDataset:
        """One instance of level `index`: `frames`, the JPEG data of the tiles at `order` ((tile_x, tile_y)).

        concatenation: (InConcatenationNumber, InConcatenationTotalNumber, frames in earlier members) or None.
        """
        number = concatenation[0] if concatenation else 1
        sop_instance = self.uid("instance", index, number)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = WSI_SOP_CLASS, sop_instance
        meta.TransferSyntaxUID = JPEG_BASELINE
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)

        # SOP common, patient, study, series, frame of reference, equipment
        ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, sop_instance
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Slide", "HISTOFAST", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = self.uid("study"), self.uid("series")
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = self.uid("frame of reference"), "SLIDE_CORNER"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
        ds.AcquisitionDateTime = "20240101000000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SM", 1, index * 1000 + number
        ds.Manufacturer, ds.ManufacturerModelName = "histofast", "synth_dicom"
        ds.DeviceSerialNumber, ds.SoftwareVersions = "0", "histofast"

        # whole slide microscopy image: value 3 of ImageType (VOLUME) is what makes OpenSlide take it as a level
        ds.ImageType = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if index == 0
                        else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
        ds.BurnedInAnnotation = ds.SpecimenLabelInImage = "NO"
        ds.VolumetricProperties, ds.FocusMethod, ds.ExtendedDepthOfField = "VOLUME", "AUTO", "NO"
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
        raw = level.tiles_across * level.tiles_down * self.tile_size**2 * 3
        ds.LossyImageCompressionRatio = _ds(raw / max(1, sum(map(len, level.tiles))))
        # ImageOrientationSlide (0, -1, 0, -1, 0, 0): along a row −Y, down a column −X, from level 0's corner
        ds.ImageOrientationSlide = ["0", "-1", "0", "-1", "0", "0"]
        corner = (self.height * self.mpp / 1000, self.width * self.mpp / 1000)  # (X, Y), mm: every level's
        spacing = (self.mpp * self.height / level.height / 1000, self.mpp * self.width / level.width / 1000)
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = map(_ds, corner)
        ds.TotalPixelMatrixOriginSequence = [origin]
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = level.width * spacing[1], level.height * spacing[0]  # FL
        ds.ImagedVolumeDepth = 0.001
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = level.width, level.height
        ds.TotalPixelMatrixFocalPlanes, ds.NumberOfFocalPlanes, ds.DistanceBetweenFocalPlanes = 1, 1, 0.0
        ds.DimensionOrganizationType = "TILED_SPARSE" if self.sparse else "TILED_FULL"
        ds.ContainerIdentifier = "HISTOFAST-SYNTH"
        ds.IssuerOfTheContainerIdentifierSequence = []
        ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
        specimen = Dataset()
        specimen.SpecimenIdentifier, specimen.SpecimenUID = "HISTOFAST-SYNTH", self.uid("specimen")
        specimen.IssuerOfTheSpecimenIdentifierSequence, specimen.SpecimenPreparationSequence = [], []
        ds.SpecimenDescriptionSequence = [specimen]
        optical = Dataset()
        optical.OpticalPathIdentifier, optical.OpticalPathDescription = "1", "Brightfield"
        optical.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
        optical.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
        optical.ObjectiveLensPower = _ds(self.magnification)  # OpenSlide's openslide.objective-power
        ds.OpticalPathSequence, ds.NumberOfOpticalPaths = [optical], 1

        # image pixel: the tiles are RGB-coded JPEGs (Adobe marker, no YCbCr transform); "RGB" makes OpenSlide
        # tell libjpeg so, as the SVS's PhotometricInterpretation RGB does ("YBR_FULL_422" would mangle them)
        ds.Rows = ds.Columns = self.tile_size
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.NumberOfFrames = len(frames)

        measures = Dataset()  # level 0's PixelSpacing (mm; rows, then columns) is OpenSlide's mpp-y, mpp-x
        measures.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
        measures.SliceThickness = "0.001"
        path = Dataset()
        path.OpticalPathIdentifier = "1"
        shared = Dataset()
        shared.PixelMeasuresSequence, shared.OpticalPathIdentificationSequence = [measures], [path]
        ds.SharedFunctionalGroupsSequence = [shared]
        if concatenation:
            member, total, offset = concatenation
            ds.ConcatenationUID = self.uid("concatenation", index)
            ds.SOPInstanceUIDOfConcatenationSource = self.uid("concatenation source", index)
            ds.ConcatenationFrameOffsetNumber = offset  # TILED_FULL: where this member's frames start
            ds.InConcatenationNumber, ds.InConcatenationTotalNumber = member, total
        if self.sparse:
            ds.PerFrameFunctionalGroupsSequence = [self._position(tx, ty, corner, spacing) for tx, ty in order]
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        return ds

    def _position(self, tx: int, ty: int, corner: tuple[float, float], spacing: tuple[float, float]) -> Dataset:
        """A PerFrameFunctionalGroupsSequence item: the frame's top-left pixel (1-based) and slide position."""
        column, row = tx * self.tile_size + 1, ty * self.tile_size + 1
        position = Dataset()
        position.ColumnPositionInTotalImagePixelMatrix = column  # SL, as libdicom requires
        position.RowPositionInTotalImagePixelMatrix = row
        position.XOffsetInSlideCoordinateSystem = _ds(corner[0] - (row - 1) * spacing[0])
        position.YOffsetInSlideCoordinateSystem = _ds(corner[1] - (column - 1) * spacing[1])
        position.ZOffsetInSlideCoordinateSystem = "0"
        item = Dataset()
        item.PlanePositionSlideSequence = [position]
        return item
