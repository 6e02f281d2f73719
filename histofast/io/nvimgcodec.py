"""nvImageCodec (NVIDIA): tiled-TIFF levels decoded in batches of regions, on the GPU straight into device
memory (nvTIFF + nvJPEG, the hardware JPEG engines where the GPU has them) or, with its CPU backends, into
host memory. Both go through the same calls here, so CI (no GPU) tests everything but the device decode.

nvImageCodec reads the file itself; histofast only tells it which IFD holds a level (from the
``TiffSlide``'s checked pages) and which rows to decode into which buffer (``decode_into``)."""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..build import cuda_majors
from ..errors import HistofastError, SlideError
from ..utils.noise import stderr_captured
from .bands import CHUNK_BYTES, Pending
from .slide import Slide

log = logging.getLogger("histofast")

INSTALL = "pip install 'histofast[gpu]'"
# Compressions served through nvImageCodec (the others stay on the CPU fast path): none, LZW, JPEG, deflate.
COMPRESSIONS = {1, 5, 7, 8, 32946}
# Its CPU backend must give the fast path's pixels exactly; nvJPEG's IDCT and upsampling may differ from
# libjpeg-turbo by a few levels, so the GPU is only checked against gross errors (a wrong colour space).
GPU_CHECK_MEAN_DIFF = 2.0
# Decoder options: chroma upsampled the way libjpeg-turbo does by default ("fancy" upsampling).
DECODER_OPTIONS = ":fancy_upsampling=1"
OPEN_FILES = 16  # parsed files a decoder keeps (as a lane keeps open slides)


def nvimgcodec_installed() -> bool:
    """Whether nvImageCodec's Python package (``nvidia-nvimgcodec-cu13``) imports."""
    try:
        _module()
    except ImportError:
        return False
    return True


_LOADER_MESSAGES: list[str] = []  # what nvImageCodec's extension loader printed at import
# The first import happens inside one capture of file descriptor 2, whole (utils.noise: one at a time).
_imported: Any = None  # the module once its import has finished (sys.modules holds it half-made before)


def _module() -> Any:
    """``nvidia.nvimgcodec``, imported quietly: at import its extension loader prints an error for each
    GPU library it cannot load (nvJPEG, nvTIFF, nvJPEG2000 where only the CPU parts are installed).
    Those lines are kept for the message of a decode that then fails. Safe from many threads at once."""
    global _imported
    if _imported is not None:
        return _imported
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")  # its own log lines (read once, at import)
    with stderr_captured() as lines:
        if _imported is None:  # another thread may have imported it while this one waited
            import nvidia.nvimgcodec as nvimgcodec

            _imported = nvimgcodec
    _LOADER_MESSAGES.extend(lines)
    for line in lines:
        log.debug("nvImageCodec: %s", line)
    return _imported


def cuda_major_mismatch(nv: Any, torch_cuda: str | None) -> str:
    """Why nvImageCodec cannot share a process with this PyTorch, or "": its CUDA major
    (``nvidia.nvimgcodec.__cuda_version__``, e.g. 13030) must be PyTorch's (``torch.version.cuda``, e.g. "13.0").
    Two majors in one environment (``cucim-cu12`` beside the CUDA 13 stack) load libraries of the wrong one."""
    built = getattr(nv, "__cuda_version__", None)
    if not built or not torch_cuda:
        return ""
    ours, theirs = int(built) // 1000, int(str(torch_cuda).split(".")[0])
    if ours == theirs:
        return ""
    installed = "; ".join(f"CUDA {major}: {', '.join(names)}" for major, names in cuda_majors().items())
    return (f"nvImageCodec is built for CUDA {ours} (nvidia-nvimgcodec-cu{ours}, __cuda_version__ {built}) but "
            f"PyTorch for CUDA {theirs} (torch.version.cuda {torch_cuda}): one CUDA major per environment; "
            f"pip uninstall nvidia-nvimgcodec-cu{ours} and {INSTALL} for CUDA {theirs} (installed: {installed})")


class NvDecoder:
    """One nvImageCodec decoder, on a CUDA device or on the CPU, and the thread that calls it.

    Decodes run one at a time, in submission order, on the decoder's own thread (nvImageCodec spreads a
    batch over its own threads and CUDA streams). On a GPU every decode is ordered on ``stream``, a CUDA
    stream of its own, between two events: before writing it waits for the work queued so far on the
    caller's current stream (the buffer's previous readers, or the frees its memory came from), and the
    caller's stream waits for it before reading the pixels; neither the device nor the host is synchronised.

    Args:
        device: "cpu" (nvImageCodec's CPU backends, into numpy arrays) or "cuda[:i]" (its GPU backends,
            into torch tensors on that device).
        threads: CPU threads nvImageCodec may use (default: all cores).
    Raises:
        HistofastError: nvImageCodec is not installed, or its decoder cannot be created here.
    """

    def __init__(self, device: str = "cpu", threads: int | None = None) -> None:
        try:
            nv = _module()
        except ImportError:
            raise HistofastError(f"nvImageCodec is not installed ({INSTALL})") from None
        self.device = device
        self.gpu = device != "cpu"
        self.name = "nvimgcodec-gpu" if self.gpu else "nvimgcodec-cpu"
        self._nv = nv
        threads = threads or os.cpu_count() or 1
        with stderr_captured() as noise:
            try:
                if self.gpu:
                    import torch

                    mismatch = cuda_major_mismatch(nv, torch.version.cuda)
                    if mismatch:
                        raise HistofastError(mismatch)
                    index = torch.device(device).index
                    self.device_index = torch.cuda.current_device() if index is None else index
                    self.stream = torch.cuda.Stream(self.device_index)
                    backends = [nv.Backend(nv.GPU_ONLY), nv.Backend(nv.HW_GPU_ONLY), nv.Backend(nv.HYBRID_CPU_GPU)]
                    self._decoder = nv.Decoder(device_id=self.device_index, max_num_cpu_threads=threads,
                                               backends=backends, options=DECODER_OPTIONS)
                else:
                    self.stream = None
                    self._decoder = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=threads,
                                               backends=[nv.Backend(nv.CPU_ONLY)])
            except HistofastError:
                raise
            except Exception as e:
                raise HistofastError(f"nvImageCodec cannot create a decoder on {device} ({e})") from None
        self.noise = _LOADER_MESSAGES + noise  # shown when a decode fails: they say what is missing
        for line in noise:
            log.debug("nvImageCodec: %s", line)
        # CUDA's current device is per thread: the decoder's thread works on the decoder's device.
        start = (_set_device, (self.device_index,)) if self.gpu else (None, ())
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="histofast-nvimgcodec", initializer=start[0],
                                          initargs=start[1])
        self._streams: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- buffers ---------------------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...]) -> Any:
        """An uninitialised uint8 buffer where this decoder writes: numpy, or a torch tensor on the GPU."""
        if not self.gpu:
            return np.empty(shape, np.uint8)
        import torch

        return torch.empty(shape, dtype=torch.uint8, device=self.device)

    # -- decoding --------------------------------------------------------------------------------
    def code_stream(self, path: str) -> Any:
        """The file's nvImageCodec code stream (parsed once per file; the OS caches its pages). The last
        ``OPEN_FILES`` are kept: a lane's decoder lives as long as its dataset, over thousands of slides."""
        with self._lock:
            stream = self._streams.pop(path, None)
            if stream is None:
                try:
                    stream = self._nv.CodeStream(path)
                except Exception as e:
                    raise SlideError(path, f"nvImageCodec cannot parse the file ({e})") from None
            self._streams[path] = stream  # the most recent last
            while len(self._streams) > OPEN_FILES:
                self._streams.pop(next(iter(self._streams)))
            return stream

    def decode_into(self, path: str, ifd_offset: int, boxes: list[tuple[int, int, int, int]], outs: list[Any],
                    what: str) -> Pending:
        """Start decoding level regions into buffers; ``wait()`` on the result raises if a region failed.

        Args:
            path: the TIFF file.
            ifd_offset: byte offset of the level's IFD.
            boxes: (x, y, w, h) of each region, level pixels, inside the level.
            outs: one uint8 (h, w, 3) C-contiguous buffer per box, from ``empty`` (a row slice of one is fine).
            what: the regions for messages, e.g. "level 0 rows 0..1024".
        ``wait()`` returns once the pixels may be used: on the GPU, work queued afterwards on the
        caller's current stream sees them (nothing waits on the host beyond the decode call itself).
        """
        if not self.gpu:
            return Pending([self._thread.submit(self._decode, path, ifd_offset, boxes, outs, what, None)])
        import torch

        current = torch.cuda.current_stream(self.device_index)
        future = self._thread.submit(self._decode, path, ifd_offset, boxes, outs, what, current.record_event())
        return Pending([future], current.wait_event)

    def _decode(self, path: str, ifd_offset: int, boxes: list, outs: list, what: str, after: Any) -> Any:
        nv = self._nv
        root = self.code_stream(path)
        sources = [root.get_sub_code_stream(bitstream_offset=ifd_offset,
                                            region=nv.Region(start=[y, x], end=[y + h, x + w]))
                   for x, y, w, h in boxes]
        if not self.gpu:
            images = self._decoder.decode(sources, images=[nv.as_image(o) for o in outs])
        else:
            if after is not None:
                self.stream.wait_event(after)
            handle = self.stream.cuda_stream
            try:
                images = self._decoder.decode(sources, images=[nv.as_image(o, handle) for o in outs],
                                              cuda_stream=handle)
            finally:
                # decode() returns once the work is queued: until it has run, the buffers belong to this stream
                # too. Recorded before this thread lets go of them, so PyTorch's caching allocator cannot hand
                # their memory to another tensor while nvJPEG/nvTIFF still write it (a consumer that stops early).
                for out in outs:
                    out.record_stream(self.stream)
        failed = [k for k, image in enumerate(images) if image is None]
        if failed:
            x, y, w, h = boxes[failed[0]]
            hint = f"; nvImageCodec said: {' | '.join(self.noise[-3:])}" if self.noise else ""
            raise SlideError(path, f"{self.name} could not decode {what} (region x={x} y={y} {w}×{h}, "
                                   f"{len(failed)} of {len(boxes)} regions failed){hint}")
        for image, out in zip(images, outs):
            self._land(image, out)
        return self.stream.record_event() if self.gpu else None

    def _land(self, image: Any, out: Any) -> None:
        """Make sure the pixels are in ``out``: nvImageCodec documents reusing only the buffers it allocated,
        so where it decoded into one of its own instead of ours, copy (on the decode stream)."""
        if not self.gpu:
            if np.asarray(image).__array_interface__["data"][0] != out.__array_interface__["data"][0]:
                np.copyto(out, np.asarray(image))
            return
        if image.__cuda_array_interface__["data"][0] != out.data_ptr():
            import torch

            with torch.cuda.stream(self.stream):
                out.copy_(torch.as_tensor(image, device=out.device))

    def close(self) -> None:
        """Wait for the decodes in flight, on the host and then on the device, and release the decoder."""
        self._thread.shutdown(wait=True)
        if self.gpu:
            self.stream.synchronize()
        self._streams.clear()


def _set_device(index: int) -> None:
    import torch

    torch.cuda.set_device(index)


def level_ifd(slide: Slide, level: int) -> tuple[int, str] | None:
    """(IFD byte offset, why not) for a level nvImageCodec can read: a level the tiled-TIFF fast path
    decodes directly (8-bit RGB without alpha, pixels matching OpenSlide's) in a compression served here.
    Returns (offset, "") or (0, the reason it cannot)."""
    from .tiff import TiffSlide

    if not isinstance(slide, TiffSlide):
        return 0, f"{slide.backend} slides are not tiled TIFFs nvImageCodec reads (only SVS and generic tiled TIFF)"
    if slide.remote:
        return 0, "nvImageCodec reads local files only: a remote slide's tiles are fetched and decoded on the CPU"
    page = slide.stored_page(level)
    if page is None:
        return 0, f"level {level} is read through OpenSlide, not decoded directly"
    if page.compression not in COMPRESSIONS:
        return 0, f"level {level} uses TIFF compression {page.compression}, not served through nvImageCodec"
    if page.offset == 0:
        return 0, f"level {level} has no IFD offset"
    return page.offset, ""


def check_level(decoder: NvDecoder, slide: Slide, level: int, offset: int) -> None:
    """Decode one stored tile of the level both ways and raise ``SlideError`` unless nvImageCodec's pixels
    match the fast path's (exactly on the CPU; within ``GPU_CHECK_MEAN_DIFF`` mean levels on a GPU)."""
    tw, th = slide.tile_shape(level)
    lw, lh = slide.level_dimensions[level]
    across, down = -(-lw // tw), -(-lh // th)
    x, y = (across // 2) * tw, (down // 2) * th
    w, h = min(tw, lw - x), min(th, lh - y)
    theirs = slide.read_level_region(level, (x, y), (w, h))
    out = decoder.empty((h, w, 3))
    decoder.decode_into(os.fspath(slide.path), offset, [(x, y, w, h)], [out], f"level {level}").wait()
    mine = out.cpu().numpy() if decoder.gpu else out
    diff = np.abs(mine.astype(np.int16) - theirs)
    if (diff.mean() > GPU_CHECK_MEAN_DIFF) if decoder.gpu else diff.any():
        why = colour_transform_mixup(mine, theirs) if slide.stored_page(level).compression == 7 else ""
        raise SlideError(slide.path, f"{decoder.name} decodes level {level} differently from the fast path "
                                     f"(max difference {diff.max()}, mean {diff.mean():.3g} levels){why}")


# JFIF's full-range YCbCr ↔ RGB (ITU-R BT.601), as libjpeg applies it.
_YCC_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])
_RGB_TO_YCC = np.linalg.inv(_YCC_TO_RGB)


def colour_transform_mixup(mine: np.ndarray, theirs: np.ndarray) -> str:
    """Which JPEG colour transform a decoder got wrong, when its pixels (``mine``) are the fast path's
    (``theirs``, uint8 (H, W, 3)) run through the wrong one: ": …" naming it, or "" when neither explains them.

    RGB-coded JPEG (an Adobe marker with transform 0, as Aperio and ``histofast.synth`` write) decoded as YCbCr
    gives ycc→rgb(theirs); YCbCr JPEG left unconverted gives rgb→ycc(theirs)."""
    centre = np.array([0.0, 128.0, 128.0])
    as_ycc = np.clip((theirs - centre) @ _YCC_TO_RGB.T, 0, 255)  # theirs read as (Y, Cb, Cr)
    as_rgb = np.clip(theirs @ _RGB_TO_YCC.T + centre, 0, 255)  # theirs converted to (Y, Cb, Cr)
    for guess, what in ((as_ycc, "decodes RGB-coded JPEG tiles (Adobe marker, colour transform 0) as YCbCr"),
                        (as_rgb, "leaves YCbCr JPEG tiles unconverted (as if they were RGB-coded)")):
        if np.abs(mine - guess).mean() <= GPU_CHECK_MEAN_DIFF + 1:
            return f": it {what}"
    return ""


class NvRows:
    """A level's rows decoded by an ``NvDecoder`` (a ``histofast.io.bands.Rows`` source): one region per
    stored tile row, full width, decoded as one batch per chunk into the band buffer itself."""

    def __init__(self, decoder: NvDecoder, slide: Slide, level: int, offset: int, owned: bool = True) -> None:
        self.decoder, self.slide, self.level, self.offset, self._owned = decoder, slide, level, offset, owned
        self.name = decoder.name
        # A GPU decodes big batches best; host memory is the CPU backend's limit, as for the fast path.
        self.chunk_bytes = 4 * CHUNK_BYTES if decoder.gpu else CHUNK_BYTES
        self._path = os.fspath(slide.path)
        self._width = slide.level_dimensions[level][0]
        self._tile_h = slide.tile_shape(level)[1]

    def empty(self, shape: tuple[int, ...]) -> Any:
        return self.decoder.empty(shape)

    def read(self, y: int, h: int, out: Any) -> Pending:
        tops = sorted({y, *range(-(-y // self._tile_h) * self._tile_h, y + h, self._tile_h)})
        boxes = [(0, top, self._width, min(y + h, (top // self._tile_h + 1) * self._tile_h) - top) for top in tops]
        outs = [out[top - y : top - y + bh] for (_, top, _, bh) in boxes]
        return self.decoder.decode_into(self._path, self.offset, boxes, outs, f"level {self.level} rows {y}..{y + h}")

    def close(self) -> None:
        if self._owned:
            self.decoder.close()
