"""What ``pip install histofast[...]`` brings: one CUDA major in every extra (nvImageCodec with its own TIFF
decoder's needs, the CUDA 13 cuCIM beside it), and in the environment these tests run in."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from histofast.build import cuda_majors

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _extras() -> dict[str, list[str]]:
    if not PYPROJECT.is_file():
        pytest.skip("needs the source tree")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def test_the_gpu_extra_takes_nvimgcodec_with_its_tiff_and_jpeg_decoders():
    gpu = _extras()["gpu"]
    nvimgcodec = [r for r in gpu if _name(r) == "nvidia-nvimgcodec-cu13"]
    assert len(nvimgcodec) == 1
    extras = set(re.search(r"\[([^]]*)\]", nvimgcodec[0]).group(1).replace(" ", "").split(","))
    assert {"nvtiff", "nvjpeg"} <= extras  # its own pins: nvTIFF >= 0.8 (bitstream_offset) and nvCOMP 5 (Deflate)


@pytest.mark.parametrize("combination", [("gpu", "peers"), ("gpu", "dali"), ("gpu", "peers", "dali", "test")])
def test_extras_installed_together_name_one_cuda_major(combination):
    extras = _extras()
    names = [_name(r) for extra in combination for r in extras[extra]]
    majors = cuda_majors(names)
    assert set(majors) == {13}, majors


def test_cuda_majors_reads_every_naming_scheme():
    assert cuda_majors(["nvidia-nvimgcodec-cu12", "cupy-cuda13x", "nvidia-dali-cuda130", "cucim-cu13", "numpy",
                        "nvidia-libnvcomp-cu13"]) == {12: ["nvidia-nvimgcodec-cu12"],
                                                      13: ["cucim-cu13", "cupy-cuda13x", "nvidia-dali-cuda130",
                                                           "nvidia-libnvcomp-cu13"]}


def test_the_installed_environment_has_one_cuda_major():
    """This environment as ``.ci/run`` installs it (the test extra, DALI and nvImageCodec among it): the installed
    distributions, read from their metadata, name at most one CUDA major."""
    installed = cuda_majors()
    assert len(installed) <= 1, installed
