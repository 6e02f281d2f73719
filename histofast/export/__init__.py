"""Export: the kept tiles of slides written as JPEG/PNG files or TFRecord shards (with DALI index files),
manifests and QC images, atomically and resumably (``export_slides``, behind ``histofast tile``). The
TFRecord format is written and read here without TensorFlow (``histofast.export.tfrecord``)."""
from __future__ import annotations

from .options import EXPORT_FORMATS, ExportOptions
from .qc import write_qc
from .slides import TILE_MANIFEST_FIELDS, SlideResult, export_slide, export_slides, slide_ids

__all__ = ["EXPORT_FORMATS", "ExportOptions", "SlideResult", "TILE_MANIFEST_FIELDS", "export_slide", "export_slides",
           "slide_ids", "write_qc"]
