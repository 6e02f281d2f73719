"""The GPU verification's parts that run without a GPU (benchmarks/gpu/): the summarizer on made-up results (a
partial benchmark, CUDA majors that differ), the architecture parsing, the carried wheels' install keeping nvidia.* a
namespace, gpu_bench.py killed mid-run, and verify.sh: its caps against its budget, its time limits, and a whole run
with the GPU steps stubbed and the slide and gpu_bench.py --quick steps real on the CPU. What needs a GPU is checked by
running verify.sh on one."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
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

PARTS = ("tile_grid", "pixels", "iter_tiles", "pipeline", "kernels")
HEADLINE = {"tile_grid_x_cpu": 6.04, "tile_grid_x_recipe": 120.0, "tile_grid_mp_per_s": 5000.0,
            "big_tile_grid_x_cpu": None, "keep_differ_fraction": 0.0012, "pixel_max_abs_diff": 3,
            "pixel_mean_abs_diff": 0.21, "iter_tiles_x_cpu": 4.5, "gpu_busy": 0.934, "copy_gb_per_s": 4300.0,
            "white_ratio_of_copy": 0.81, "augment_rot0_of_copy": 0.76, "augment_rot1_of_copy": 0.52}


def made_up_run(out: Path, *, tests_xml: bool = True, bench_errors: list | None = None, **bench: object) -> None:
    """The files a verify.sh run leaves, with made-up contents (``bench``: more gpu_bench.json fields)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.tsv").write_text("wheels\t0\t2100\t25\t\nbuild\t0\t31000\t80\t\ninfo\t0\t1500\t15\t\n"
                                   "slide\t0\t6000\t20\t\ntests\t0\t61000\t80\t\nkernels\t0\t12000\t25\t\n"
                                   "bench\t0\t65000\t80\t\n")
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
        "histofast": {"version": "0.1.0", "cuda_compiled": True, "cuda_archs": "90", "cuda_runtime_version": 13000},
        "nvimgcodec_cuda_version": 13030, "packages": {"nvidia-nvimgcodec-cu13": "0.9.0.20", "cupy-cuda13x": "14.0.1",
                                                       "nvidia-dali-cuda130": None, "numpy": "2.3.5"},
        "installed_cuda_majors": {"13": ["cupy-cuda13x", "nvidia-nvimgcodec-cu13"]}}))
    (out / "gpu_bench.json").write_text(json.dumps({
        "machine": {"gpu": "NVIDIA H200", "cores": 16}, "config": {"device": "cuda", "decode": "gpu", "big": False},
        "headline": HEADLINE, "targets": [], "skipped": [], "errors": bench_errors or [], "seconds": {"total": 90},
        "tile_grid": [{"methods": {"accelerated": {"decoder": "nvimgcodec-gpu"}, "cpu": {"decoder": "tiff"}}}],
        "finished": True, "parts": list(PARTS), "parts_done": list(PARTS), **bench}))
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
    assert [s["wall_s"] for s in summary["steps"]] == [2.1, 31.0, 1.5, 6.0, 61.0, 12.0, 65.0]
    assert summary["versions"]["cuda_majors"] == {"torch": 13, "nvcc": 13, "histofast": 13, "nvimgcodec": 13,
                                                  "nvidia-nvimgcodec-cu13": 13, "cupy-cuda13x": 13}
    assert summary["benchmark"]["decoders"]["tile_grid"] == {"accelerated": "nvimgcodec-gpu", "cpu": "tiff"}
    whats = [n["what"] for n in summary["not_run"]]
    assert any("DALI" in w for w in whats) and any("65536" in w for w in whats)
    line = summary["final_line"]
    assert line.startswith("gpu-verify PROBLEMS | tests 2 passed, 2 failed, 3 skipped")
    for figure in ("tile_grid 6.0× CPU", "120× recipe", "iter_tiles 4.5× CPU", "GPU busy 93%", "4300 GB/s",
                   "white_ratio 81%", "rot0 76%", "rot1 52%", "max|Δ| 3", "NVIDIA H200"):
        assert figure in line
    assert "\n" not in line and "CUDA" not in line and "not finished" not in line


def test_summary_ok_and_fallbacks(tmp_path, capsys):
    made_up_run(tmp_path, tests_xml=False, bench_errors=[{"part": "pipeline", "error": "RuntimeError: x"}])
    with open(tmp_path / "log.txt", "a") as log:  # the tests step killed at its limit: counts come from its lines
        log.write("=== step tests (limit 150s): pytest\ntests/test_ops.py::test_a[cuda] PASSED [ 10%]\n"
                  "tests/test_ops.py::test_b[cuda] SKIPPED (needs a CUDA device) [ 20%]\n=== step tests: exit 124\n")
    (tmp_path / "steps.tsv").write_text("wheels\tskip\t0\t0\tno .whl/ folder\ntests\t124\t150000\t150\t\n"
                                        "kernels\t0\t1000\t60\t\nbench\tskip\t0\t0\tout of time (budget 360s)\n")
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


def test_summary_of_a_partial_benchmark_and_cuda_majors_that_differ(tmp_path):
    """gpu_bench.py killed during its pipeline part: the parts done are summarised, the rest named as not finished;
    a PyTorch built for another CUDA major than the rest is named on the final line."""
    made_up_run(tmp_path, finished=False, parts_done=["tile_grid", "pixels", "iter_tiles"])
    info = json.loads((tmp_path / "build_info.json").read_text())
    info["torch"]["cuda"] = "12.8"
    (tmp_path / "build_info.json").write_text(json.dumps(info))
    assert summarize.main([str(tmp_path), "--started", str(time.time() - 300), "--budget", "360"]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmark"]["parts_not_finished"] == ["pipeline", "kernels"]
    assert {n["what"] for n in summary["not_run"]} >= {"gpu_bench pipeline", "gpu_bench kernels"}
    line = summary["final_line"]
    assert "gpu_bench not finished: pipeline, kernels" in line and "tile_grid 6.0× CPU" in line
    assert " | CUDA 13, but torch 12 | " in line
    assert line.endswith(" of 360 s") and summary["budget_s"] == 360
    made_up_run(tmp_path / "early", finished=False, parts=[], parts_done=[])  # killed before it planned its parts
    assert summarize.summarize(tmp_path / "early")["benchmark"]["parts_not_finished"] == ["setup"]


def test_arch_from_compute_cap():
    assert steps.arch_from_compute_cap("9.0\n") == "90"
    assert steps.arch_from_compute_cap("8.0\n9.0\n8.0\n") == "80;90"
    assert steps.arch_from_compute_cap("") is None
    assert steps.arch_from_compute_cap("No devices were found\n") is None


def test_verify_sh_syntax():
    assert subprocess.run(["bash", "-n", str(GPU / "verify.sh")]).returncode == 0


def plan(**env: str) -> dict:
    """verify.sh --plan: the budget, each step's cap, the KILL grace and the summary's reserve."""
    out = subprocess.run(["bash", str(GPU / "verify.sh"), "--plan"], env=dict(os.environ, **env), capture_output=True,
                         text=True, check=True).stdout
    m = re.fullmatch(r"budget (\d+) s; caps (.+); kill grace (\d+) s each; summary reserve (\d+) s; total (\d+) s"
                     r"( \(over the budget.*)?\n", out)
    assert m, out
    caps = {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    return {"budget": int(m.group(1)), "caps": caps, "grace": int(m.group(3)), "reserve": int(m.group(4)),
            "total": int(m.group(5)), "over": bool(m.group(6))}


def test_verify_sh_caps_fit_its_budget():
    """The caps, each with its KILL grace, and the summary's reserve add up to less than the default budget (6 min;
    10 with the big slide), so no step is cut short by the ones before it; the docstring's table is the caps."""
    for big in ("0", "1"):
        p = plan(VERIFY_BIG=big)
        assert p["total"] == sum(p["caps"].values()) + len(p["caps"]) * p["grace"] + p["reserve"]
        assert p["total"] < p["budget"] <= (600 if big == "1" else 360) and not p["over"]
        assert tuple(p["caps"]) == summarize.STEPS
    assert plan(VERIFY_BUDGET_S="200")["over"]
    head = (GPU / "verify.sh").read_text().split("\nset -uo")[0]
    assert dict(re.findall(r"^#   (\w+) +(\d+) ", head, re.M)) == {k: str(v) for k, v in plan()["caps"].items()}
    p = plan()
    assert f"default {p['budget']} s" in head and f"add up to {p['total']} s" in head


def fake_python(tmp_path: Path, tests: str) -> Path:
    """A PYTHON for verify.sh: summarize.py and gpu_bench.py real, the GPU steps stubbed, the tests step ``tests``."""
    fake = tmp_path / "fakepy"
    fake.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *summarize.py*|*gpu_bench.py*) exec {sys.executable} "$@" ;;
  *"steps.py wheels"*|*"steps.py build"*) echo done; exit 0 ;;
  *"steps.py info"*) echo '{{"gpus": []}}' > "${{@: -1}}"; exit 0 ;;
  *"-m pytest tests"*) {tests} ;;
  *"-m pytest benchmarks"*) for a; do [[ $a == --benchmark-json=* ]] && echo '{{"benchmarks": []}}' > "${{a#*=}}"; done
    exit 0 ;;
  *) exit 3 ;;
esac
""")
    fake.chmod(0o755)
    return fake


def test_verify_sh_time_limits_and_output(tmp_path):
    """verify.sh with its Python stubbed: the hanging tests step is killed at its limit, the steps past the budget
    are recorded as not run, the summary still comes, the final line is the last, $OUT keeps at most 8 files."""
    out = tmp_path / "out"
    # RESERVE (10 s) + GRACE (3 s) are kept back: 28 leaves the tests step ~14 s (so it runs even when a busy
    # machine is slow to reach it) and leaves < 5 s once it is killed (so kernels and bench are skipped).
    env = dict(os.environ, OUT=str(out), PYTHON=str(fake_python(tmp_path, "sleep 60")), VERIFY_BUDGET_S="28",
               VERIFY_BENCH_ARGS=f"--device cpu --quick --cache-dir {tmp_path / 'cache'}")
    run = subprocess.run(["bash", str(GPU / "verify.sh")], env=env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("gpu-verify PROBLEMS"), lines[-5:]
    assert "steps: tests timeout" in lines[-1]
    recorded = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "steps.tsv").read_text().splitlines()}
    assert recorded["build"] == recorded["slide"] == "0" and recorded["tests"] in ("124", "137")
    assert recorded["kernels"] == recorded["bench"] == "skip"
    assert (out / "summary.json").is_file() and lines[-1] in (out / "log.txt").read_text()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and not any(len(p.relative_to(out).parts) > 3 for p in files)


def check_quick_report(report: dict, decode: str) -> None:
    """gpu_bench.py --device cpu --quick --cpu-kernels --repeats 1: every part ran and agrees with the CPU path."""
    assert report["finished"] and report["parts_done"] == report["parts"] == list(PARTS)
    assert report["errors"] == [] and report["machine"]["git_sha"]
    assert {s["part"] for s in report["skipped"]} == {"targets"}
    assert report["slides"][0]["prepare_s"] >= 0
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


def cpu_decode() -> str:
    from histofast.io.nvimgcodec import nvimgcodec_installed

    return "nvimgcodec-cpu" if nvimgcodec_installed() else "cpu"


@pytest.mark.skipif(shutil.which("git") is None, reason="machine_info reads git")
def test_verify_sh_whole_run_on_the_cpu(tmp_path):
    """verify.sh at its default budget with the GPU steps stubbed and the slide and bench steps real on the CPU
    (gpu_bench.py --quick): every step passes and leaves its file, the run ends well inside the budget."""
    out = tmp_path / "out"
    junit = ('<testsuites><testsuite name="pytest" tests="1"><testcase classname="tests.test_ops" name="test_a[cuda]"'
             '/></testsuite></testsuites>')
    tests = f"""for a; do [[ $a == --junitxml=* ]] && echo '{junit}' > "${{a#*=}}"; done; exit 0"""
    decode = cpu_decode()
    env = dict(os.environ, OUT=str(out), PYTHON=str(fake_python(tmp_path, tests)),
               VERIFY_BENCH_ARGS=f"--device cpu --decode {decode} --quick --cpu-kernels --repeats 1 "
                                 f"--cache-dir {tmp_path / 'cache'}",
               OMP_NUM_THREADS="1")  # torch's spinning threads vs a busy CI machine
    env.pop("VERIFY_BUDGET_S", None)
    env.pop("VERIFY_BIG", None)
    start = time.perf_counter()
    run = subprocess.run(["bash", str(GPU / "verify.sh")], env=env, capture_output=True, text=True, timeout=400)
    wall = time.perf_counter() - start
    last = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0 and last.startswith("gpu-verify OK | tests 1 passed"), run.stdout[-5000:]
    budget = plan()["budget"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget_s"] == budget and summary["wall_s"] <= wall + 1 and wall < budget  # wall_s: whole seconds
    assert last.endswith(f" of {budget} s")
    assert [s["name"] for s in summary["steps"] if s["status"] == "ok"] == [
        n for n in summarize.STEPS if n != "wheels" or any((GPU.parents[1] / ".whl").glob("*.whl"))]
    for name in ("build_info.json", "tests.xml", "kernels.json", "gpu_bench.json", "summary.json"):
        assert (out / name).is_file(), name
    check_quick_report(json.loads((out / "gpu_bench.json").read_text()), decode)
    assert "JSON:" in run.stdout and "--recipe-tiles 64" in run.stdout


def test_gpu_bench_killed_mid_run_leaves_the_parts_done(tmp_path):
    """gpu_bench.py rewrites its JSON as each part ends: killed (SIGTERM, as timeout does) while its second part
    runs — made to hang here — it leaves a report with the first part's figures and says it did not finish."""
    out = tmp_path / "bench.json"
    hang = ("import importlib.util, sys, time\n"
            f"spec = importlib.util.spec_from_file_location('gpu_bench', {str(GPU / 'gpu_bench.py')!r})\n"
            "bench = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(bench)\n"
            "bench.part_pixels = lambda *args: time.sleep(600)\n"
            "sys.exit(bench.main(sys.argv[1:]))\n")
    command = [sys.executable, "-c", hang, "--device", "cpu", "--decode", "cpu", "--quick", "--repeats", "1",
               "--parts", "tile_grid,pixels,iter_tiles", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        report: dict = {}
        while "tile_grid" not in report.get("parts_done", ()) and process.poll() is None:
            assert time.monotonic() < deadline, "tile_grid did not finish in 120 s"
            time.sleep(0.2)
            report = json.loads(out.read_text()) if out.is_file() else {}
        assert process.poll() is None, log.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    report = json.loads(out.read_text())
    assert report["finished"] is False and report["parts"] == ["tile_grid", "pixels", "iter_tiles"]
    assert report["parts_done"] == ["tile_grid"] and report["errors"] == []
    assert report["tile_grid"][0]["x_cpu"] > 0 and report["headline"]["tile_grid_x_cpu"] > 0
    assert report["pixels"] is None and report["iter_tiles"] is None
    assert summarize.unfinished(report) == ["pixels", "iter_tiles"]
    assert not list(tmp_path.glob(".bench.json.*.tmp"))


def make_wheel(folder: Path, name: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel of ``files`` (path → text) with a dist-info pip accepts."""
    info = f"{name}-1.0.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{p},sha256={digest(t)},{len(t.encode())}\n" for p, t in files.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in {**files, f"{info}/RECORD": record}.items():
            z.writestr(p, text)
    return path


def imports(*folders: Path) -> subprocess.CompletedProcess:
    """``import nvidia.fake_a, nvidia.fake_b`` with ``folders`` first on the path (as verify.sh's PYTHONPATH puts
    /tmp/site before site-packages); -S: this machine's own site-packages (its nvidia.*) left out."""
    return subprocess.run([sys.executable, "-S", "-c", "import nvidia.fake_a, nvidia.fake_b"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, folders))))


@pytest.mark.parametrize("site", ["namespace", "regular"])
def test_wheels_step_keeps_nvidia_a_namespace(tmp_path, site):
    """The carried wheels' empty nvidia/__init__.py, installed by plain pip --target, hides the other folder's
    nvidia.fake_b (site-packages' DALI); installed by steps.py wheels both import, whether site-packages' nvidia is
    a namespace folder or a regular package."""
    carried = make_wheel(tmp_path, "fake_a", {"nvidia/__init__.py": "", "nvidia/fake_a/__init__.py": "A = 1\n"})
    dali = make_wheel(tmp_path, "fake_b", {"nvidia/fake_b/__init__.py": "B = 1\n",
                                           **({"nvidia/__init__.py": ""} if site == "regular" else {})})
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target"]
    subprocess.run([*pip, str(tmp_path / "site-packages"), str(dali)], check=True)
    subprocess.run([*pip, str(tmp_path / "plain"), str(carried)], check=True)  # verify.sh's former wheels step
    assert "No module named 'nvidia.fake_b'" in imports(tmp_path / "plain", tmp_path / "site-packages").stderr

    assert steps.main(["wheels", "--target", str(tmp_path / "site"), str(carried)]) == 0
    assert (tmp_path / "site" / "nvidia" / "__init__.py").read_text() == steps.NAMESPACE_INIT
    run = imports(tmp_path / "site", tmp_path / "site-packages")
    assert run.returncode == 0, run.stderr
    assert steps.main(["wheels", "--target", str(tmp_path / "site"), str(carried)]) == 0  # a rerun: --upgrade
    assert imports(tmp_path / "site", tmp_path / "site-packages").returncode == 0
