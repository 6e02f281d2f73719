"""The steps of ``benchmarks/gpu/verify.sh`` that need logic, one subcommand each (the shell only time-boxes them):

    python3 benchmarks/gpu/steps.py wheels --target /tmp/site .whl/*.whl   # carried wheels, nvidia.* a namespace
    python3 benchmarks/gpu/steps.py arch                 # this machine's GPU architecture, e.g. 90
    python3 benchmarks/gpu/steps.py build                # the extension for that architecture only, no internet
    python3 benchmarks/gpu/steps.py info --json F.json   # GPU, driver, build, versions (also printed)

``build`` runs pip's editable install without build isolation or an index (``pip install --no-build-isolation
--no-deps --no-index -e .``) with ``HISTOFAST_CUDA_ARCHS`` set to the GPU's architecture and all cores; when pip
cannot (an old setuptools, say), it drives CMake directly with setup.py's settings, the module landing in
``histofast/`` (import it with the repository root on ``PYTHONPATH``, as verify.sh does). Nothing here imports
histofast at module level, so every subcommand runs even when the build failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ARCHS = "80-real;90"  # setup.py's default, used when no GPU is found
PACKAGES = ("torch", "cupy-cuda13x", "numpy", "opencv-python-headless", "tifffile", "imagecodecs", "openslide-python",
            "openslide-bin", "google-crc32c", "nvidia-nvimgcodec-cu13", "nvidia-nvtiff-cu13", "nvidia-libnvcomp-cu13",
            "nvidia-nvjpeg", "nvidia-nvjpeg2k-cu13", "nvidia-dali-cuda130", "cucim-cu13", "pytest", "pytest-benchmark",
            "pytest-timeout", "pybind11", "cmake", "ninja", "setuptools", "pip")
# A pkgutil-style namespace package's __init__.py (the one nvImageCodec's wheel ships): its __path__ joins every
# `nvidia` folder on sys.path, whether the others are native namespace portions or regular packages.
NAMESPACE_INIT = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"


def install_wheels(wheels: list[Path], target: Path) -> int:
    """``pip install --target`` the wheels (no index, no dependencies), then keep ``nvidia`` a namespace there: the
    empty ``nvidia/__init__.py`` of nvTIFF's and nvJPEG2000's wheels makes ``target/nvidia`` a regular package,
    which (first on ``PYTHONPATH``) hides site-packages' ``nvidia.*`` (an installed DALI). It becomes
    ``NAMESPACE_INIT``, which also reaches past a regular ``nvidia`` package in site-packages (a plain namespace
    folder would not). pip's exit status."""
    rc = _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)])
    init = target / "nvidia" / "__init__.py"
    if init.parent.is_dir():
        old = init.read_text() if init.is_file() else None
        code = [line.strip() for line in (old or "").splitlines() if line.strip() and line.strip()[0] != "#"]
        if not code:
            init.write_text(NAMESPACE_INIT)
            print(f"wheels: {init} {'was empty' if old is not None else 'was missing'}; now a pkgutil-style "
                  "namespace (nvidia.* from every folder on sys.path)", flush=True)
        elif code != [NAMESPACE_INIT.strip()]:
            print(f"wheels: {init} has code of its own: left as it is (nvidia.* elsewhere may be hidden)", flush=True)
    return rc


def arch_from_compute_cap(text: str) -> str | None:
    """CMake CUDA architectures from ``nvidia-smi --query-gpu=compute_cap --format=csv,noheader`` output: one
    "major.minor" line per GPU ("9.0" → "90"; two kinds → "80;90"); None when no line is a capability."""
    found = []
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", line)
        if m and m.group(1) + m.group(2) not in found:
            found.append(m.group(1) + m.group(2))
    return ";".join(sorted(found, key=int)) or None


def detect_arch() -> tuple[str | None, str]:
    """(architectures, how they were read): nvidia-smi first, then PyTorch; (None, why) without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        arch = arch_from_compute_cap(out.stdout) if out.returncode == 0 else None
        if arch:
            return arch, "nvidia-smi --query-gpu=compute_cap"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
            return ";".join(f"{a}{b}" for a, b in sorted(caps)), "torch.cuda.get_device_capability"
    except Exception:  # torch missing or broken: no GPU to read
        pass
    return None, "no GPU found by nvidia-smi or torch"


def _run(command: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> int:
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, env=env, cwd=cwd).returncode


def _tool(name: str) -> str:
    """A build tool: on PATH, else beside this interpreter (a virtual environment's pip-installed cmake, ninja)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else name)


def cmake_build(env: dict[str, str]) -> int:
    """setup.py's CMake configure and build, run directly: ``_C`` lands in ``histofast/``; 0 on success."""
    import pybind11

    build = REPO / "build" / "gpu-verify"
    env = dict(env, PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))  # for ninja
    cmake = _tool("cmake")
    configure = [cmake, "-S", str(REPO), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={REPO / 'histofast'}{os.sep}",
                 f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                 "-DCMAKE_BUILD_TYPE=Release",
                 f"-DHISTOFAST_CUDA={'OFF' if env.get('HISTOFAST_CUDA') == '0' else 'AUTO'}",
                 f"-DHISTOFAST_CUDA_ARCHS={env.get('HISTOFAST_CUDA_ARCHS', DEFAULT_ARCHS)}"]
    return _run(configure, env) or _run([cmake, "--build", str(build), "--parallel",
                                         env["CMAKE_BUILD_PARALLEL_LEVEL"]], env)


def check_build(arch: str | None) -> int:
    """Import the fresh build (a new process) and check it has CUDA for ``arch``; 0 when it does."""
    code = ("import json, histofast; i = histofast.build_info(); i['cuda_available'] = histofast.cuda_available(); "
            "print(json.dumps(i))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    print(out.stdout.strip() or out.stderr.strip()[-2000:], flush=True)
    if out.returncode != 0:
        print("build: the extension does not import", flush=True)
        return 1
    info = json.loads(out.stdout)
    if arch and not info.get("cuda_compiled"):
        print("build: a GPU is here but the extension was built without CUDA (is nvcc on PATH?)", flush=True)
        return 1
    if arch and not all(a in str(info.get("cuda_archs")) for a in arch.split(";")):
        print(f"build: built for {info.get('cuda_archs')}, not {arch}", flush=True)
        return 1
    return 0


def build(jobs: int | None) -> int:
    """Build ``histofast._C`` for this machine's GPU only, with every core and no internet; 0 on success."""
    env = dict(os.environ)
    arch = env.get("HISTOFAST_CUDA_ARCHS")
    how = "HISTOFAST_CUDA_ARCHS as given"
    if not arch:
        arch, how = detect_arch()
        if arch:
            env["HISTOFAST_CUDA_ARCHS"] = arch
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs or os.cpu_count() or 1)
    print(f"build: HISTOFAST_CUDA_ARCHS={env.get('HISTOFAST_CUDA_ARCHS', DEFAULT_ARCHS + ' (default)')} ({how}), "
          f"{env['CMAKE_BUILD_PARALLEL_LEVEL']} jobs", flush=True)
    pip = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", str(REPO)]
    if _run(pip, env) != 0:
        print("build: pip's editable install failed; building with CMake directly, as setup.py does", flush=True)
        if cmake_build(env) != 0:
            return 1
    return check_build(env.get("HISTOFAST_CUDA_ARCHS") if arch else None)


def _command(*args: str) -> str | None:
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def info() -> dict[str, Any]:
    """What the verification ran on: GPUs (nvidia-smi), nvcc, Python, package versions, PyTorch's view of the
    device, histofast's build, which optional decoders are installed and the CUDA nvImageCodec was built for. Each
    entry is read on its own; one that cannot be read holds its error."""
    out: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                           "platform": platform.platform(), "cores": os.cpu_count()}
    fields = ("name", "driver_version", "memory.total", "compute_cap", "clocks.max.sm", "clocks.max.mem")
    smi = _command("nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader")
    out["gpus"] = [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in (smi or "").splitlines()]
    nvcc = _command("nvcc", "--version")
    out["nvcc"] = next((line for line in nvcc.splitlines() if "release" in line), nvcc) if nvcc else None
    out["git_sha"] = _command("git", "-C", str(REPO), "rev-parse", "HEAD")
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    out["packages"] = versions
    try:
        import torch

        out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                        "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out["torch"].update(device=p.name, capability=f"{p.major}.{p.minor}",
                                multiprocessors=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    except Exception as e:  # recorded, not fatal
        out["torch"] = {"error": f"{type(e).__name__}: {e}"}
    try:
        sys.path.insert(0, str(REPO))
        import histofast
        from histofast.data._common import dali_installed
        from histofast.io.nvimgcodec import nvimgcodec_installed

        out["histofast"] = {**histofast.build_info(), "cuda_available": histofast.cuda_available(),
                            "nvimgcodec_installed": nvimgcodec_installed(), "dali_installed": dali_installed(),
                            "path": str(Path(histofast.__file__).parent)}
        out["installed_cuda_majors"] = histofast.build.cuda_majors()  # {13: [distributions built for CUDA 13]}
    except Exception as e:  # the build failed: say so, keep the rest
        out["histofast"] = {"error": f"{type(e).__name__}: {e}"}
    try:  # where `nvidia.*` resolves: a regular package in site-packages would hide the carried nvimgcodec
        import nvidia

        out["nvidia_package_path"] = list(getattr(nvidia, "__path__", []))
    except ImportError as e:
        out["nvidia_package_path"] = f"ImportError: {e}"
    try:
        import nvidia.nvimgcodec as nvimgcodec

        out["nvimgcodec_cuda_version"] = getattr(nvimgcodec, "__cuda_version__", None)  # 13030 for CUDA 13.3
    except Exception as e:  # not installed, or its libraries do not load
        out["nvimgcodec_cuda_version"] = f"{type(e).__name__}: {e}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheels", help="install wheels with pip --target, keeping nvidia.* a namespace there")
    w.add_argument("--target", type=Path, required=True, help="the folder (put it on PYTHONPATH)")
    w.add_argument("wheels", type=Path, nargs="+")
    sub.add_parser("arch", help="print this machine's GPU architectures for HISTOFAST_CUDA_ARCHS (exit 1: none)")
    b = sub.add_parser("build", help="build the extension for this GPU only, with every core, without internet")
    b.add_argument("--jobs", type=int, help="parallel compile jobs (default: every core)")
    i = sub.add_parser("info", help="GPU, driver, build and versions as JSON")
    i.add_argument("--json", type=Path, help="also write it here")
    a = p.parse_args(argv)
    if a.command == "wheels":
        return install_wheels(a.wheels, a.target)
    if a.command == "arch":
        arch, how = detect_arch()
        print(arch or how)
        return 0 if arch else 1
    if a.command == "build":
        return build(a.jobs)
    smi = _command("nvidia-smi")
    print(smi or "nvidia-smi: not available", flush=True)
    record = info()
    text = json.dumps(record, indent=1)
    print(text)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")
    return 0 if "error" not in record["histofast"] else 1


if __name__ == "__main__":
    sys.exit(main())
