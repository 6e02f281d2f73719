"""What this installation of histofast was built with, and whether a CUDA device can be used.

Importing this never touches the GPU; only calling ``cuda_available()`` asks the driver."""
from __future__ import annotations

from typing import Any

from . import _C
from ._version import __version__


def cuda_available() -> bool:
    """True when the extension was compiled with CUDA and a CUDA device is visible."""
    return bool(_C.cuda_compiled()) and _C.cuda_device_count() > 0


def build_info() -> dict[str, Any]:
    """The resolved build: version, CUDA (compiled, architectures, runtime, devices), OpenMP, AVX2, and the
    fast path's JPEG decoder.

    ``cuda_runtime_version`` is -1 without CUDA (as torchvision's ``cuda_version()``). ``jpeg_strict`` is True
    when the strict libjpeg-turbo decoder is compiled in (the build found the libjpeg headers), False when JPEG
    tiles decode through imagecodecs (``ops.STRICT_JPEG``); ``jpeg`` says which, in words."""
    info: dict[str, Any] = {"version": __version__, **_C.build_info()}
    info["cuda_devices"] = _C.cuda_device_count()
    info["cuda_driver_version"] = _C.cuda_driver_version()
    return info
