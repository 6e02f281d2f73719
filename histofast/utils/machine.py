"""The machine record every benchmark JSON carries (build, git sha, cores, GPU, CPU model, library
versions) and the machine's load, so a timing taken on a busy shared machine can be told apart."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """The machine record every benchmark JSON carries: build, git sha (and dirty flag), cores, GPU, CPU model,
    platform and library versions (benchmarks/conftest.py uses it too)."""
    from ..build import build_info, cuda_available

    repo = Path(__file__).resolve().parents[2]
    info: dict[str, Any] = {**build_info(), "git_sha": _git(repo, "rev-parse", "HEAD") or "unknown",
                            "cores": os.cpu_count()}
    # diff-index only reads (unlike git status, which may rewrite the index).
    dirty = subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--"], cwd=repo, capture_output=True) \
        if info["git_sha"] != "unknown" else None
    info["git_dirty"] = None if dirty is None else dirty.returncode != 0
    info["gpu"] = "none"
    if cuda_available():
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name()
        except Exception:  # torch missing: the device count is still in build_info
            info["gpu"] = f"{info['cuda_devices']} CUDA device(s)"
    info["cpu"] = _cpu_model()
    info["platform"] = platform.platform()
    info["python"] = platform.python_version()
    info["libraries"] = _versions()
    return info


def _git(repo: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"numpy": np.__version__}
    for name in ("tifffile", "imagecodecs", "openslide", "cv2"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    try:
        import imagecodecs

        out["libjpeg"] = imagecodecs.jpeg8_version()
    except Exception:
        pass
    try:
        import openslide

        out["libopenslide"] = openslide.__library_version__
    except Exception:
        pass
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot (/proc/stat), None where unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, AttributeError):
        return None


def wait_idle(limit: float, quiet_cores: float = 0.25, window: float = 0.5) -> bool:
    """Wait (up to ``limit`` seconds) for a ``window`` in which other processes kept fewer than ``quiet_cores``
    cores busy; True when one came (or when the machine's load cannot be read)."""
    deadline = time.perf_counter() + limit
    while True:
        busy0, c0 = busy_cpu_seconds(), time.process_time()
        time.sleep(window)
        busy1 = busy_cpu_seconds()
        if busy0 is None or busy1 is None:
            return True
        if (busy1 - busy0 - (time.process_time() - c0)) / window < quiet_cores:
            return True
        if time.perf_counter() >= deadline:
            return False


