"""The build: what the extension reports, and that HISTOFAST_CUDA=0 builds a CPU-only extension."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import histofast
from histofast import _C

REPO = Path(__file__).resolve().parents[1]


def test_build_info_describes_the_build():
    info = histofast.build_info()
    assert info["version"] == histofast.__version__
    assert isinstance(info["cuda_compiled"], bool) and info["cuda_compiled"] == _C.cuda_compiled()
    assert (info["cuda_runtime_version"] > 0) == info["cuda_compiled"]
    assert info["cpu_threads"] >= 1 and isinstance(info["avx2"], bool)


def test_cuda_available_is_false_not_an_error_without_a_device():
    assert histofast.cuda_available() == (_C.cuda_compiled() and _C.cuda_device_count() > 0)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on PATH")
def test_cuda_sources_compiled_where_nvcc_is_found():
    """CI builds here with nvcc present: a CUDA build that silently fell back to CPU must fail."""
    assert _C.cuda_compiled(), "nvcc is on PATH but histofast._C was built without CUDA"
    assert _C.build_info()["cuda_archs"] == os.environ.get("HISTOFAST_CUDA_ARCHS", "80-real;90").replace(";", ",")


@pytest.mark.skipif(not (REPO / "setup.py").exists(), reason="needs the source tree")
def test_histofast_cuda_0_builds_cpu_only(tmp_path):
    """The real build path (setup.py → CMake) with HISTOFAST_CUDA=0, imported in a fresh process."""
    pytest.importorskip("pybind11")
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are needed to build")
    env = {**os.environ, "HISTOFAST_CUDA": "0"}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO, env=env, check=True, capture_output=True,
    )
    shutil.copytree(REPO / "histofast", tmp_path / "lib" / "histofast", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so"))
    built = list((tmp_path / "lib" / "histofast").glob("_C*.so"))
    assert len(built) == 1
    probe = "import histofast; assert not histofast._C.cuda_compiled(); print(histofast.ops.white_ratio.__name__)"
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path / "lib")},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
