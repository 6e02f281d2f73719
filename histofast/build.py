"""What this installation of histofast was built with, and whether a CUDA device can be used.

Importing this never touches the GPU; only calling ``cuda_available()`` asks the driver."""
from __future__ import annotations

import re
from importlib import metadata
from typing import Any, Iterable

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


# A CUDA major in a distribution's name: nvidia-nvimgcodec-cu13, cucim-cu12, cupy-cuda13x, nvidia-dali-cuda130.
_CUDA_NAME = re.compile(r"-cu(?:da)?(\d{2})(?:\d|x)?$")
# CUDA 13's own libraries dropped the suffix; these carry the toolkit's version (nvidia-cufft's, say, does not).
_CUDA_VERSIONED = ("nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-nvjpeg", "cuda-toolkit")


def cuda_majors(names: Iterable[str] | None = None) -> dict[int, list[str]]:
    """The CUDA majors that distributions are built for: ``{13: ["cupy-cuda13x", ...]}``, names sorted. ``names``:
    distribution names to read (default: every installed distribution, with the versions of the unsuffixed CUDA
    libraries). Two majors in one environment load libraries of the wrong one (``cucim-cu12`` beside CUDA 13)."""
    found: dict[int, set[str]] = {}
    if names is None:
        dists = [(d.metadata["Name"] or "", d.version) for d in metadata.distributions()]
    else:
        dists = [(name, "") for name in names]
    for name, version in dists:
        name = name.lower().replace("_", "-")
        match = _CUDA_NAME.search(name)
        if match:
            found.setdefault(int(match.group(1)), set()).add(name)
        elif name in _CUDA_VERSIONED and version.split(".")[0].isdigit():
            found.setdefault(int(version.split(".")[0]), set()).add(name)
    return {major: sorted(found[major]) for major in sorted(found)}
