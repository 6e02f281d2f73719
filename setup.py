"""Builds histofast._C by driving CMake (the pybind11 cmake_example shape).

Environment variables read here and forwarded to CMake:
  HISTOFAST_CUDA=0          build without CUDA even when nvcc is found (default: auto).
  HISTOFAST_CUDA_ARCHS=...  CMAKE_CUDA_ARCHITECTURES, e.g. "90" (default "80-real;90": SASS for
                            sm_80 and sm_90 plus PTX for compute_90, so newer GPUs JIT).
  CMAKE_ARGS="..."          extra arguments for the CMake configure step.
  CMAKE_BUILD_PARALLEL_LEVEL=N  parallel compile jobs (default: number of CPUs).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = ".") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("HISTOFAST_CUDA", "auto")
        archs = os.environ.get("HISTOFAST_CUDA_ARCHS", "80-real;90")
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DHISTOFAST_CUDA={'OFF' if cuda == '0' else 'AUTO'}",
            f"-DHISTOFAST_CUDA_ARCHS={archs}",
            "-G", "Ninja",
        ] + shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        print(f"histofast build: HISTOFAST_CUDA={cuda} HISTOFAST_CUDA_ARCHS={archs} jobs={jobs}", flush=True)
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)


setup(ext_modules=[CMakeExtension("histofast._C")], cmdclass={"build_ext": CMakeBuild})
