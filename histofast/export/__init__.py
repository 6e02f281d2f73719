"""Export: the kept tiles of slides written as JPEG/PNG files or TFRecord shards (with DALI index files),
manifests and QC images, atomically and resumably (``export_slides``, behind ``histofast tile``). The
TFRecord format is written and read here without TensorFlow (``histofast.export.tfrecord``). On a Dask
distributed cluster, ``export_slides_distributed`` runs ``export_slide`` per slide on the workers
(``histofast.export.cluster``)."""
from __future__ import annotations

from .cluster import export_slides_distributed
from .inputs import SLIDE_SUFFIXES, SlideInputs, find_slides
from .qc import write_qc
from .settings import EXPORT_FORMATS, ExportOptions
from .slides import TILE_MANIFEST_FIELDS, SlideResult, export_slide, export_slides
from .source import slide_ids

__all__ = ["EXPORT_FORMATS", "ExportOptions", "SLIDE_SUFFIXES", "SlideInputs", "SlideResult", "TILE_MANIFEST_FIELDS",
           "export_slide", "export_slides", "export_slides_distributed", "find_slides", "slide_ids", "write_qc"]
