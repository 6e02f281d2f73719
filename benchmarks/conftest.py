"""Benchmark configuration: the test suite's references are the baselines (one copy of each recipe),
and every JSON report carries the machine and the build (git sha, cores, GPU, CUDA, flags)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    from histofast.utils.machine import machine_info as histofast_machine_info

    machine_info["histofast"] = histofast_machine_info()
