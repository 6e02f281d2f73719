"""The GPU verification's parts that run without a GPU (benchmarks/gpu/): the summarizer on made-up results, the
architecture parsing, gpu_bench.py --quick on the CPU end to end, and verify.sh's syntax, time limits and output
folder with its Python steps stubbed. What needs a GPU is checked by running verify.sh on one."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gpu_verify_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarize = load("summarize")
steps = load("steps")

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="1"
failures="1" skipped="3" tests="7">
<testcase classname="tests.test_ops" name="test_a[cuda]" time="0.1"/>
<testcase classname="tests.test_ops" name="test_b[cuda]" time="0.1"/>
<testcase classname="tests.tiling.test_grid" name="test_gpu_grid" time="0.2"><failure message="assert 1 == 2&#10;more">
trace</failure></testcase>
<testcase classname="tests.data.test_pipeline" name="test_fixture" time="0"><error message="fixture broke">x</error>
</testcase>
<testcase classname="tests.data.test_pipeline" name="test_dali[dali]" time="0"><skipped type="pytest.skip"
message="NVIDIA DALI is not installed">s</skipped></testcase>
<testcase classname="tests.data.test_pipeline" name="test_dali2[dali]" time="0"><skipped type="pytest.skip"
message="NVIDIA DALI is not installed">s</skipped></testcase>
<testcase classname="tests.io.test_nv" name="test_big" time="0"><skipped type="pytest.skip"
message="needs 80 GB">s</skipped></testcase>
<testcase classname="tests.io.test_nv" name="test_known" time="0"><skipped type="pytest.xfail" message="known">s
</skipped></testcase>
</testsuite></testsuites>"""

HEADLINE = {"tile_grid_x_cpu": 6.04, "tile_grid_x_recipe": 120.0, "tile_grid_mp_per_s": 5000.0,
            "big_tile_grid_x_cpu": None, "keep_differ_fraction": 0.0012, "pixel_max_abs_diff": 3,
            "pixel_mean_abs_diff": 0.21, "iter_tiles_x_cpu": 4.5, "gpu_busy": 0.934, "copy_gb_per_s": 4300.0,
            "white_ratio_of_copy": 0.81, "augment_rot0_of_copy": 0.76, "augment_rot1_of_copy": 0.52}


def made_up_run(out: Path, *, tests_xml: bool = True, bench_errors: list | None = None) -> None:
    """The files a verify.sh run leaves, with made-up contents."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.tsv").write_text("wheels\t0\t2100\t60\t\nbuild\t0\t31000\t150\t\ninfo\t0\t1500\t30\t\n"
                                   "tests\t0\t61000\t150\t\nkernels\t0\t12000\t60\t\nbench\t0\t95000\t180\t\n")
    if tests_xml:
        (out / "tests.xml").write_text(JUNIT)
    (out / "kernels.json").write_text(json.dumps({"benchmarks": [
        {"name": "test_white_ratio_cuda[device-only]", "group": "gpu white_ratio",
         "stats": {"median": 0.00012, "iqr": 0.00001, "rounds": 900}},
        {"name": "test_augment_cuda[device-only]", "group": "gpu augment",
         "stats": {"median": 0.0021, "iqr": 0.0001, "rounds": 300}}]}))
    (out / "build_info.json").write_text(json.dumps({
        "python": "3.12.3", "cores": 16, "nvcc": "Cuda compilation tools, release 13.0, V13.0.88",
        "gpus": [{"name": "NVIDIA H200", "driver_version": "580.159.04", "memory.total": "143771 MiB",
                  "compute_cap": "9.0"}],
        "torch": {"version": "2.11.0+cu130", "cuda": "13.0", "device": "NVIDIA H200", "multiprocessors": 132},
        "histofast": {"version": "0.1.0", "cuda_compiled": True, "cuda_archs": "90"}}))
    (out / "gpu_bench.json").write_text(json.dumps({
        "machine": {"gpu": "NVIDIA H200", "cores": 16}, "config": {"device": "cuda", "decode": "gpu", "big": False},
        "headline": HEADLINE, "targets": [], "skipped": [], "errors": bench_errors or [], "seconds": {"total": 90},
        "tile_grid": [{"methods": {"accelerated": {"decoder": "nvimgcodec-gpu"}, "cpu": {"decoder": "tiff"}}}]}))
    (out / "log.txt").write_text(
        "=== step kernels (limit 60s): pytest\n"
        "benchmarks/test_kernels.py::test_white_ratio_cuda[device-only] PASSED [ 25%]\n"
        "benchmarks/test_kernels.py::test_augment_cuda[with-transfers] SKIPPED (needs x) [ 50%]\n"
        "=== step kernels: exit 0 after 12.0 s\n")


def test_junit_counts_failures_and_grouped_skip_reasons(tmp_path):
    (tmp_path / "t.xml").write_text(JUNIT)
    r = summarize.parse_junit(tmp_path / "t.xml")
    assert (r["passed"], r["failed"], r["errors"], r["skipped"], r["xfailed"]) == (2, 1, 1, 3, 1)
    assert r["skip_reasons"] == {"NVIDIA DALI is not installed": 2, "needs 80 GB": 1}
    assert [f["name"] for f in r["failures"]] == ["tests.tiling.test_grid::test_gpu_grid",
                                                  "tests.data.test_pipeline::test_fixture"]
    assert r["failures"][0]["message"] == "assert 1 == 2"
    assert summarize.parse_junit(tmp_path / "missing.xml") == {"found": False}


def test_summary_and_final_line(tmp_path):
    made_up_run(tmp_path)
    assert summarize.main([str(tmp_path), "--started", "0"]) == 1  # a test failed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is False
    assert summary["tests"]["passed"] == 2 and summary["tests"]["failed"] == 1
    assert summary["kernels"]["count"] == 2 and summary["kernels"]["skipped"] == 1
    assert summary["kernels"]["benchmarks"][0]["median_ms"] == pytest.approx(0.12)
    assert summary["device"]["name"] == "NVIDIA H200" and summary["device"]["compute_cap"] == "9.0"
    assert summary["versions"]["torch"] == "2.11.0+cu130" and summary["versions"]["cuda_archs"] == "90"
    assert [s["wall_s"] for s in summary["steps"]] == [2.1, 31.0, 1.5, 61.0, 12.0, 95.0]
    assert summary["benchmark"]["decoders"]["tile_grid"] == {"accelerated": "nvimgcodec-gpu", "cpu": "tiff"}
    whats = [n["what"] for n in summary["not_run"]]
    assert any("DALI" in w for w in whats) and any("65536" in w for w in whats)
    line = summary["final_line"]
    assert line.startswith("gpu-verify PROBLEMS | tests 2 passed, 2 failed, 3 skipped")
    for figure in ("tile_grid 6.0× CPU", "120× recipe", "iter_tiles 4.5× CPU", "GPU busy 93%", "4300 GB/s",
                   "white_ratio 81%", "rot0 76%", "rot1 52%", "max|Δ| 3", "NVIDIA H200"):
        assert figure in line
    assert "\n" not in line


def test_summary_ok_and_fallbacks(tmp_path, capsys):
    made_up_run(tmp_path, tests_xml=False, bench_errors=[{"part": "pipeline", "error": "RuntimeError: x"}])
    with open(tmp_path / "log.txt", "a") as log:  # the tests step killed at its limit: counts come from its lines
        log.write("=== step tests (limit 150s): pytest\ntests/test_ops.py::test_a[cuda] PASSED [ 10%]\n"
                  "tests/test_ops.py::test_b[cuda] SKIPPED (needs a CUDA device) [ 20%]\n=== step tests: exit 124\n")
    (tmp_path / "steps.tsv").write_text("wheels\tskip\t0\t0\tno .whl/ folder\ntests\t124\t150000\t150\t\n"
                                        "kernels\t0\t1000\t60\t\nbench\tskip\t0\t0\tout of time (budget 470s)\n")
    assert summarize.main([str(tmp_path)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "tests 1 passed, 0 failed, 1 skipped (from log: no XML)" in last
    assert "steps: tests timeout" in last and "gpu_bench failed: pipeline" in last
    summary = json.loads((tmp_path / "summary.json").read_text())
    reasons = {n["what"]: n["why"] for n in summary["not_run"]}
    assert reasons["step tests"] == "stopped at its 150 s limit"
    assert reasons["step bench"].startswith("out of time")
    assert reasons["step build"].startswith("no record")

    good = tmp_path / "good"
    made_up_run(good)
    (good / "tests.xml").write_text(JUNIT.replace('<failure message="assert 1 == 2&#10;more">', "<x>")
                                    .replace("trace</failure>", "</x>").replace(
                                        '<error message="fixture broke">x</error>', ""))
    assert summarize.main([str(good)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("gpu-verify OK | tests 4 passed, 0 failed")


def test_arch_from_compute_cap():
    assert steps.arch_from_compute_cap("9.0\n") == "90"
    assert steps.arch_from_compute_cap("8.0\n9.0\n8.0\n") == "80;90"
    assert steps.arch_from_compute_cap("") is None
    assert steps.arch_from_compute_cap("No devices were found\n") is None


def test_verify_sh_syntax():
    assert subprocess.run(["bash", "-n", str(GPU / "verify.sh")]).returncode == 0


def test_verify_sh_time_limits_and_output(tmp_path):
    """verify.sh with its Python stubbed: the hanging tests step is killed at its limit, the steps past the budget
    are recorded as not run, the summary still comes, the final line is the last, $OUT keeps at most 8 files."""
    fake = tmp_path / "fakepy"
    fake.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *summarize.py*) exec {sys.executable} "$@" ;;
  *"steps.py build"*) echo built; exit 0 ;;
  *"steps.py info"*) echo '{{"gpus": []}}' > "${{@: -1}}"; exit 0 ;;
  *"-m pytest tests"*) sleep 60 ;;
  *) exit 3 ;;
esac
""")
    fake.chmod(0o755)
    out = tmp_path / "out"
    # 20 s of the budget are kept for the summary: 33 leaves the tests step ~10 s (so it runs even when a busy
    # machine is slow to reach it) and leaves < 5 s once it is killed (so kernels and bench are skipped).
    env = dict(os.environ, OUT=str(out), PYTHON=str(fake), VERIFY_BUDGET_S="33")
    run = subprocess.run(["bash", str(GPU / "verify.sh")], env=env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("gpu-verify PROBLEMS"), lines[-5:]
    assert "steps: tests timeout" in lines[-1]
    recorded = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "steps.tsv").read_text().splitlines()}
    assert recorded["build"] == "0" and recorded["tests"] in ("124", "137")
    assert recorded["kernels"] == recorded["bench"] == "skip"
    assert (out / "summary.json").is_file() and lines[-1] in (out / "log.txt").read_text()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and not any(len(p.relative_to(out).parts) > 3 for p in files)


@pytest.mark.skipif(shutil.which("git") is None, reason="machine_info reads git")
def test_gpu_bench_quick_on_the_cpu(tmp_path):
    from histofast.io.nvimgcodec import nvimgcodec_installed

    decode = "nvimgcodec-cpu" if nvimgcodec_installed() else "cpu"
    out = tmp_path / "bench.json"
    command = [sys.executable, str(GPU / "gpu_bench.py"), "--device", "cpu", "--decode", decode, "--quick",
               "--cpu-kernels", "--repeats", "1", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))  # torch's spinning threads vs a busy CI machine
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == [] and report["machine"]["git_sha"]
    assert {s["part"] for s in report["skipped"]} == {"targets"}
    grid = report["tile_grid"][0]
    assert grid["size"] == [2048, 2048] and set(grid["methods"]) >= {"accelerated", "cpu"}
    assert grid["methods"]["accelerated"]["decoder"] == ("nvimgcodec-cpu" if decode != "cpu" else "tiff")
    assert grid["keep_vs_cpu"]["differ"] == 0  # nvImageCodec's CPU backend gives the fast path's pixels exactly
    assert report["pixels"]["max_abs_diff"] == 0 and report["pixels"]["tiles"] == 16
    assert report["iter_tiles"]["methods"]["accelerated"]["tiles"] == report["iter_tiles"]["methods"]["cpu"]["tiles"]
    assert report["pipeline"]["reduced"] and report["pipeline"]["busy"] > 0
    kernels = report["kernels"]  # --cpu-kernels: the GPU part's code on torch CPU tensors
    assert kernels["white_ratio"]["equals_cpu"] and kernels["copy"]["gb_per_s"] > 0
    assert kernels["augment_rot0"]["max_abs_diff_vs_cpu"] == kernels["augment_rot1"]["max_abs_diff_vs_cpu"] == 0
    head = report["headline"]
    assert head["tile_grid_x_cpu"] > 0 and head["white_ratio_of_copy"] > 0
    assert all(t["met"] is None for t in report["targets"])  # never judged off a GPU
    assert "JSON:" in run.stdout
