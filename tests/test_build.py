"""The build: what the extension reports, and that HISTOFAST_CUDA=0 builds a CPU-only extension and a machine
without the libjpeg headers builds one whose fast path decodes JPEG tiles through imagecodecs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import histofast
from histofast import _C

REPO = Path(__file__).resolve().parents[1]
# Where CMake's FindJPEG looks for jpeglib.h on the machines we build on (system, /usr/local, conda).
JPEG_HEADER_DIRS = [Path("/usr/include"), Path("/usr/local/include"), *Path("/usr/include").glob("*-linux-gnu"),
                    *([Path(os.environ["CONDA_PREFIX"]) / "include"] if "CONDA_PREFIX" in os.environ else [])]


def test_build_info_describes_the_build():
    info = histofast.build_info()
    assert info["version"] == histofast.__version__
    assert isinstance(info["cuda_compiled"], bool) and info["cuda_compiled"] == _C.cuda_compiled()
    assert (info["cuda_runtime_version"] > 0) == info["cuda_compiled"]
    assert info["cpu_threads"] >= 1 and isinstance(info["avx2"], bool)


def test_build_info_says_which_jpeg_decoder_the_fast_path_uses():
    info = histofast.build_info()
    assert info["jpeg_strict"] == histofast.ops.STRICT_JPEG == hasattr(_C, "jpeg_decode")
    if info["jpeg_strict"]:
        assert info["jpeg"].startswith("libjpeg") and "(strict" in info["jpeg"], info["jpeg"]
    else:
        assert info["jpeg"].startswith("imagecodecs (not strict"), info["jpeg"]


@pytest.mark.skipif(not any((d / "jpeglib.h").exists() for d in JPEG_HEADER_DIRS), reason="no libjpeg headers here")
def test_strict_jpeg_decoder_built_where_the_libjpeg_headers_are():
    """CI builds here with the libjpeg headers present: a build that silently left the strict decoder out must fail."""
    info = histofast.build_info()
    assert info["jpeg_strict"], info["jpeg"]
    assert info["jpeg"].startswith("libjpeg-turbo ") and info["jpeg"].endswith("(strict: every libjpeg warning is an "
                                                                              "error)"), info["jpeg"]


def test_cuda_available_is_false_not_an_error_without_a_device():
    assert histofast.cuda_available() == (_C.cuda_compiled() and _C.cuda_device_count() > 0)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on PATH")
def test_cuda_sources_compiled_where_nvcc_is_found():
    """CI builds here with nvcc present: a CUDA build that silently fell back to CPU must fail."""
    assert _C.cuda_compiled(), "nvcc is on PATH but histofast._C was built without CUDA"
    assert _C.build_info()["cuda_archs"] == os.environ.get("HISTOFAST_CUDA_ARCHS", "80-real;90").replace(";", ",")


@pytest.fixture(scope="module")
def lean_build(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """The real build path (setup.py → CMake) with HISTOFAST_CUDA=0 and the libjpeg headers hidden (CMake's
    find_package(JPEG) fails as on a machine without them), next to a copy of the package: (the folder to put on
    PYTHONPATH, the environment, the build's output). One build serves both tests that use it."""
    if not (REPO / "setup.py").exists():
        pytest.skip("needs the source tree")
    pytest.importorskip("pybind11")
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are needed to build")
    root = tmp_path_factory.mktemp("lean_build")
    cmake_args = f"{os.environ.get('CMAKE_ARGS', '')} -DCMAKE_DISABLE_FIND_PACKAGE_JPEG=TRUE".strip()
    env = {**os.environ, "HISTOFAST_CUDA": "0", "CMAKE_ARGS": cmake_args}
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(root / "lib"), "--build-temp", str(root / "tmp")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    shutil.copytree(REPO / "histofast", root / "lib" / "histofast", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    assert len(list((root / "lib" / "histofast").glob("_C*.so"))) == 1
    deps = subprocess.run(["ninja", "-t", "deps"], cwd=root / "tmp" / "histofast._C", capture_output=True, text=True,
                          check=True).stdout
    assert "jpeg_decode" not in deps and "jpeglib.h" not in deps  # no source of the strict decoder compiled
    return root / "lib", {**env, "PYTHONPATH": str(root / "lib")}, build.stdout + build.stderr


def test_histofast_cuda_0_builds_cpu_only(lean_build):
    """HISTOFAST_CUDA=0 (the lean build), imported in a fresh process."""
    lib, env, _ = lean_build
    probe = "import histofast; assert not histofast._C.cuda_compiled(); print(histofast.ops.white_ratio.__name__)"
    run = subprocess.run([sys.executable, "-c", probe], cwd=lib.parent, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_builds_without_the_libjpeg_headers_and_the_fast_path_decodes_through_imagecodecs(lean_build, tmp_path):
    """Issue 20, item 6: with the libjpeg headers hidden the build succeeds, says so (CMake and build_info()), and
    the fast path still serves every level of an SVS directly with the in-tree build's pixels and tile_grid, and
    still names the file, level and tile of a tile that does not decode."""
    import tifffile

    lib, env, output = lean_build
    assert "histofast: libjpeg headers not found" in output and "strict JPEG=OFF" in output  # CMake's messages
    slide = tmp_path / "slide.svs"
    histofast.synth.write_slide(slide, 1300, 1000, seed=20, min_level_size=128)
    expected = {}
    with histofast.open_slide(slide, threads=2) as s:
        expected["direct"] = np.array(s.direct_levels)
        assert s.backend == "tiff" and len(s.direct_levels) == s.level_count > 1
        for level, (w, h) in enumerate(s.level_dimensions):
            expected[f"pixels{level}"] = s.read_level_region(level, (0, 0), (w, h))
            grid = histofast.tile_grid(s, 128, 64, level=level)
            expected[f"ratio{level}"], expected[f"keep{level}"] = grid.white_ratio, grid.keep
    np.savez(tmp_path / "expected.npz", **expected)
    with tifffile.TiffFile(slide) as tif:  # tile 3 of level 0 (not the one checked at open) all zeros
        offset, count = int(tif.pages[0].dataoffsets[3]), int(tif.pages[0].databytecounts[3])
    data = bytearray(slide.read_bytes())
    data[offset : offset + count] = bytes(count)
    (tmp_path / "damaged.svs").write_bytes(bytes(data))
    probe = textwrap.dedent("""
        import sys
        import numpy as np
        import pytest
        import histofast
        info = histofast.build_info()
        assert info["jpeg_strict"] is False and not histofast.ops.STRICT_JPEG, info
        assert info["jpeg"] == "imagecodecs (not strict: _C was built without the libjpeg headers)", info
        assert not hasattr(histofast._C, "jpeg_decode") and not hasattr(histofast._C, "decode_jpegs_counting_white")
        expected = np.load(sys.argv[1] + "/expected.npz")
        with histofast.open_slide(sys.argv[1] + "/slide.svs", threads=2) as s:
            assert s.backend == "tiff" and s.direct_levels == tuple(expected["direct"]), s.direct_levels
            for level, (w, h) in enumerate(s.level_dimensions):
                np.testing.assert_array_equal(s.read_level_region(level, (0, 0), (w, h)), expected[f"pixels{level}"])
                grid = histofast.tile_grid(s, 128, 64, level=level)
                np.testing.assert_array_equal(grid.white_ratio, expected[f"ratio{level}"])
                np.testing.assert_array_equal(grid.keep, expected[f"keep{level}"])
        damaged = sys.argv[1] + "/damaged.svs"
        message = "corrupt tile: level 0 tile 3 does not decode \\(imagecodecs: "
        with histofast.open_slide(damaged, threads=2) as s:
            assert 0 in s.direct_levels
            with pytest.raises(histofast.SlideError, match=message) as info:
                s.read_level_region(0, (700, 10), (100, 100))
            assert damaged in str(info.value)
            with pytest.raises(histofast.SlideError, match=message):
                histofast.tile_grid(s, 256)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=lib.parent, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
