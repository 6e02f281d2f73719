"""Benchmark configuration: the test suite's references are the baselines (one copy of each recipe),
and every JSON report carries the machine and the build (git sha, cores, GPU, CUDA, flags)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import histofast  # noqa: E402


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    machine_info["histofast"] = {**histofast.build_info(), "git_sha": sha, "cores": os.cpu_count()}
    if histofast.cuda_available():
        import torch

        machine_info["histofast"]["gpu"] = torch.cuda.get_device_name()
