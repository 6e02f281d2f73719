"""Shared by tests/ and benchmarks/: `gpu`-marked items skip where no CUDA device is present, decided once here
(torchvision's way); nothing asks the GPU anything at import or collection time."""
from __future__ import annotations

import pytest

import histofast


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not histofast.cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
