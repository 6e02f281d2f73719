"""Summarise a ``benchmarks/gpu/verify.sh`` run from the files it left in its output folder:

    steps.tsv        one line per step: name, exit status (or "skip"), wall milliseconds, limit seconds, note
    build_info.json  GPU, driver, build and versions (steps.py info)
    tests.xml        pytest -m gpu over tests/ (JUnit XML)
    kernels.json     pytest-benchmark JSON of benchmarks/test_kernels.py -m gpu
    gpu_bench.json   benchmarks/gpu/gpu_bench.py (rewritten as each part ends: a killed run leaves the parts done)
    log.txt          everything printed (read for the failures of a step whose XML is missing)

writes ``summary.json`` there and prints one line last: tests passed/failed/skipped, the headline figures, the
benchmark parts that did not finish and CUDA major versions that differ between components.

    python3 benchmarks/gpu/summarize.py OUT [--started EPOCH_SECONDS] [--budget SECONDS]

Exit status 0 when every step ran and passed, some test passed and none failed, and every benchmark part finished
and none failed; 1 otherwise (all tests skipped means no GPU was seen: nothing was verified).
Nothing here imports histofast: it summarises a run whose build failed too.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

STEPS = ("wheels", "build", "info", "slide", "tests", "kernels", "bench")  # verify.sh's CAPS, in order
TIMEOUT_STATUSES = (124, 137)  # timeout(1): the limit passed (TERM), or the command outlived -k (KILL)
DALI = {"what": "NVIDIA DALI (Pipeline(backend='dali'), Pipeline.from_tfrecord's GPU decoding)",
        "why": "DALI is never on the GPU machine (no internet, no wheel carried): its gpu tests skip and no DALI "
               "path is verified or timed there"}
_OUTCOME = re.compile(r"^(?P<name>\S+::.*?) (?P<outcome>PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def read_steps(path: Path) -> list[dict[str, Any]]:
    """steps.tsv → one dict per step: name, status ("ok", "failed", "timeout", "not run"), rc, wall_s, limit_s,
    note."""
    steps = []
    if not path.is_file():
        return steps
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        name, rc, ms, limit = parts[:4]
        note = parts[4] if len(parts) > 4 else ""
        if rc == "skip":
            status, code = "not run", None
        else:
            code = int(rc)
            status = "ok" if code == 0 else "timeout" if code in TIMEOUT_STATUSES else "failed"
        steps.append({"name": name, "status": status, "rc": code, "wall_s": round(int(ms) / 1000, 3),
                      "limit_s": int(limit), "note": note})
    return steps


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts of a pytest JUnit XML (passed, failed, errors, skipped, xfailed), the failures by name with the first
    line of their message, and the skip reasons grouped (reason → count). ``{"found": False}`` without the file."""
    if not path.is_file():
        return {"found": False}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"found": False, "error": f"unreadable JUnit XML: {e}"}
    counts = Counter()
    failures, reasons = [], Counter()
    for case in root.iter("testcase"):
        name = "::".join(filter(None, [case.get("classname"), case.get("name")]))
        failed = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        if failed is not None or error is not None:
            kind = "failed" if failed is not None else "errors"
            node = failed if failed is not None else error
            counts[kind] += 1
            message = (node.get("message") or node.text or "").strip().splitlines()
            failures.append({"name": name, "kind": "failure" if kind == "failed" else "error",
                             "message": message[0][:500] if message else ""})
        elif skipped is not None:
            if (skipped.get("type") or "").endswith("xfail"):
                counts["xfailed"] += 1
            else:
                counts["skipped"] += 1
                reasons[(skipped.get("message") or "").strip() or "(no reason given)"] += 1
        else:
            counts["passed"] += 1
    return {"found": True, "passed": counts["passed"], "failed": counts["failed"], "errors": counts["errors"],
            "skipped": counts["skipped"], "xfailed": counts["xfailed"], "failures": failures,
            "skip_reasons": dict(reasons.most_common())}


def step_lines(log: str, step: str) -> list[str]:
    """The lines verify.sh's ``step`` printed between ``=== step NAME (`` and ``=== step NAME:``."""
    out, inside = [], False
    for line in log.splitlines():
        if line.startswith(f"=== step {step} ("):
            inside, out = True, []
        elif line.startswith(f"=== step {step}:"):
            inside = False
        elif inside:
            out.append(line)
    return out


def outcomes_from_log(lines: list[str]) -> dict[str, Any]:
    """Test counts from pytest's verbose lines (``path::name PASSED``), for a run that left no XML (killed at its
    limit); failures are the FAILED/ERROR names."""
    counts: Counter = Counter()
    failures = []
    for line in lines:
        m = _OUTCOME.match(line)
        if m:
            outcome = m.group("outcome")
            counts[outcome] += 1
            if outcome in ("FAILED", "ERROR"):
                failures.append({"name": m.group("name"), "kind": outcome.lower(), "message": "(see log.txt)"})
    return {"found": False, "from_log": True, "passed": counts["PASSED"] + counts["XPASS"], "failed": counts["FAILED"],
            "errors": counts["ERROR"], "skipped": counts["SKIPPED"], "xfailed": counts["XFAIL"], "failures": failures,
            "skip_reasons": {}}


def parse_kernels(path: Path) -> dict[str, Any]:
    """pytest-benchmark JSON → each benchmark's name, group, median and IQR in milliseconds and rounds."""
    if not path.is_file():
        return {"found": False, "benchmarks": []}
    try:
        text = path.read_text()
        data = json.loads(text) if text.strip() else {}  # pytest-benchmark leaves it empty when all skipped
    except (OSError, ValueError) as e:
        return {"found": False, "error": f"unreadable benchmark JSON: {e}", "benchmarks": []}
    rows = []
    for b in data.get("benchmarks", []):
        stats = b.get("stats", {})
        rows.append({"name": b.get("name"), "group": b.get("group"),
                     "median_ms": _ms(stats.get("median")), "iqr_ms": _ms(stats.get("iqr")),
                     "rounds": stats.get("rounds")})
    return {"found": True, "count": len(rows), "benchmarks": rows}


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else round(float(seconds) * 1e3, 4)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def device_of(info: dict[str, Any] | None, bench: dict[str, Any] | None) -> dict[str, Any]:
    """The GPU as nvidia-smi and PyTorch saw it (build_info.json), else as the benchmark's machine record did."""
    info = info or {}
    gpus = info.get("gpus") or []
    first = gpus[0] if gpus else {}
    torch_info = info.get("torch") or {}
    machine = (bench or {}).get("machine") or {}
    seen = machine.get("gpu") if machine.get("gpu") not in (None, "none") else None
    return {"name": first.get("name") or torch_info.get("device") or seen,
            "count": len(gpus), "driver": first.get("driver_version"), "compute_cap": first.get("compute_cap"),
            "memory": first.get("memory.total"), "multiprocessors": torch_info.get("multiprocessors"),
            "cores": info.get("cores") or machine.get("cores"), "cpu": machine.get("cpu")}


def cuda_majors(info: dict[str, Any] | None) -> dict[str, int]:
    """The CUDA major version each component of build_info.json was built for or names: PyTorch, nvcc, histofast's
    runtime, nvImageCodec's ``__cuda_version__`` and the installed distributions built for one (as
    ``histofast.build.cuda_majors`` read them on the machine)."""
    info = info or {}
    found: dict[str, int] = {}
    torch_cuda = (info.get("torch") or {}).get("cuda")
    if torch_cuda:
        found["torch"] = int(str(torch_cuda).split(".")[0])
    nvcc = re.search(r"release (\d+)", info.get("nvcc") or "")
    if nvcc:
        found["nvcc"] = int(nvcc.group(1))
    for name, version in (("histofast", (info.get("histofast") or {}).get("cuda_runtime_version")),
                          ("nvimgcodec", info.get("nvimgcodec_cuda_version"))):
        if isinstance(version, int) and version > 0:  # CUDA's encoding: 13030 is 13.3
            found[name] = version // 1000
    for major, names in (info.get("installed_cuda_majors") or {}).items():
        found.update(dict.fromkeys(names, int(major)))  # JSON keys are strings
    return found


def versions_of(info: dict[str, Any] | None, bench: dict[str, Any] | None) -> dict[str, Any]:
    info = info or {}
    histofast = info.get("histofast") or {}
    machine = (bench or {}).get("machine") or {}
    return {"python": info.get("python") or machine.get("python"), "nvcc": info.get("nvcc"),
            "torch": (info.get("torch") or {}).get("version"), "torch_cuda": (info.get("torch") or {}).get("cuda"),
            "histofast": histofast.get("version") or machine.get("version"),
            "git_sha": info.get("git_sha") or machine.get("git_sha"),
            "cuda_archs": histofast.get("cuda_archs"), "cuda_runtime": histofast.get("cuda_runtime_version"),
            "cuda_driver": histofast.get("cuda_driver_version"),
            "nvimgcodec_cuda": info.get("nvimgcodec_cuda_version"), "cuda_majors": cuda_majors(info),
            "packages": info.get("packages") or {}}


def not_run(steps: list[dict[str, Any]], bench: dict[str, Any] | None) -> list[dict[str, str]]:
    """What was not run or not finished, and why: DALI always; steps not run, timed out or failed; benchmark parts
    skipped, failed or not finished; the big slide unless asked for."""
    out = [dict(DALI)]
    for s in steps:
        if s["status"] == "not run":
            out.append({"what": f"step {s['name']}", "why": s["note"] or "not run"})
        elif s["status"] == "timeout":
            out.append({"what": f"step {s['name']}", "why": f"stopped at its {s['limit_s']} s limit"})
        elif s["status"] == "failed":
            out.append({"what": f"step {s['name']}", "why": f"exit status {s['rc']} (see log.txt)"})
    seen = {s["name"] for s in steps}
    out += [{"what": f"step {name}", "why": "no record (verify.sh stopped before it)"} for name in STEPS
            if steps and name not in seen]
    if bench is not None:
        out += [{"what": f"gpu_bench {s['part']}", "why": s["why"]} for s in bench.get("skipped", [])]
        out += [{"what": f"gpu_bench {e['part']}", "why": f"failed: {e['error']}"} for e in bench.get("errors", [])]
        out += [{"what": f"gpu_bench {part}", "why": "not finished: the benchmark stopped first (see step bench)"}
                for part in unfinished(bench)]
        if not (bench.get("config") or {}).get("big"):
            out.append({"what": "gpu_bench on the 65536×32768 slide", "why": "only with --big (VERIFY_BIG=1): writing "
                                                                          "it costs minutes"})
    return out


def unfinished(bench: dict[str, Any]) -> list[str]:
    """The parts gpu_bench.py planned but did not finish (its report is rewritten as each part ends); everything,
    "setup" first, when it stopped before planning; [] for a finished report (or one from before these fields)."""
    if bench.get("finished", True):
        return []
    return bench.get("parts", [])[len(bench.get("parts_done", [])):] or ["setup"]


def summarize(out: Path, started: float | None = None, budget: float | None = None) -> dict[str, Any]:
    """The summary of the run whose files are in ``out`` (see the module's docstring)."""
    log = (out / "log.txt").read_text(errors="replace") if (out / "log.txt").is_file() else ""
    steps = read_steps(out / "steps.tsv")
    tests = parse_junit(out / "tests.xml")
    if not tests["found"]:
        tests = {**outcomes_from_log(step_lines(log, "tests")), **({"error": tests["error"]} if "error" in tests
                                                                    else {})}
    kernels = parse_kernels(out / "kernels.json")
    ran = outcomes_from_log(step_lines(log, "kernels"))  # pytest's own lines: the JSON lists only what ran
    kernels.update({k: ran[k] for k in ("passed", "failed", "errors", "skipped")}, failures=ran["failures"])
    kernel_failures = ran["failures"]
    info = read_json(out / "build_info.json")
    bench = read_json(out / "gpu_bench.json")
    benchmark = None
    if bench is not None:
        benchmark = {"headline": bench.get("headline", {}), "targets": bench.get("targets", []),
                     "errors": [{k: e.get(k) for k in ("part", "error")} for e in bench.get("errors", [])],
                     "skipped": bench.get("skipped", []), "seconds": bench.get("seconds", {}),
                     "config": {k: (bench.get("config") or {}).get(k) for k in ("device", "decode", "size", "big",
                                                                                "quick", "tile_size", "stride")},
                     "decoders": _decoders(bench), "finished": bench.get("finished", True),
                     "parts_done": bench.get("parts_done"), "parts_not_finished": unfinished(bench)}
    steps_ok = bool(steps) and all(s["status"] == "ok" or (s["status"] == "not run" and s["name"] == "wheels")
                                   for s in steps)
    tests_ok = tests.get("passed", 0) > 0 and tests.get("failed", 0) == 0 and tests.get("errors", 0) == 0
    ok = (steps_ok and tests_ok and not kernel_failures and bench is not None and not bench.get("errors")
          and not unfinished(bench))
    summary: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1) if started else None, "budget_s": budget,
        "ok": ok, "device": device_of(info, bench), "versions": versions_of(info, bench),
        "build": (info or {}).get("histofast"), "steps": steps, "tests": tests, "kernels": kernels,
        "benchmark": benchmark, "not_run": not_run(steps, bench),
    }
    summary["final_line"] = final_line(summary)
    return summary


def _decoders(bench: dict[str, Any]) -> dict[str, Any]:
    grids = bench.get("tile_grid") or []
    methods = grids[0].get("methods", {}) if grids else {}
    return {"tile_grid": {k: v.get("decoder") for k, v in methods.items()},
            "iter_tiles": {k: v.get("decoder") for k, v in ((bench.get("iter_tiles") or {}).get("methods") or {})
                           .items()}}


def _num(value: Any, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec) + suffix


def final_line(summary: dict[str, Any]) -> str:
    """One line: verdict, tests passed/failed/skipped, the headline figures against their targets, device, time."""
    t = summary["tests"]
    tests = (f"tests {t.get('passed', 0)} passed, {t.get('failed', 0) + t.get('errors', 0)} failed, "
             f"{t.get('skipped', 0)} skipped" + ("" if t.get("found", True) else " (from log: no XML)"))
    parts = ["gpu-verify " + ("OK" if summary["ok"] else "PROBLEMS"), tests]
    k = summary["kernels"]
    parts.append(f"kernel benchmarks {k.get('count', 0)} timed, {len(k['failures'])} failed, {k.get('skipped', 0)} "
                 "skipped")
    b = summary["benchmark"]
    if b is None:
        parts.append("gpu_bench: no report")
    else:
        h = b["headline"]
        parts.append(f"tile_grid {_num(h.get('tile_grid_x_cpu'), '.1f', '×')} CPU (≥3×), "
                     f"{_num(h.get('tile_grid_x_recipe'), '.0f', '×')} recipe; "
                     f"iter_tiles {_num(h.get('iter_tiles_x_cpu'), '.1f', '×')} CPU; "
                     f"GPU busy {_num(h.get('gpu_busy'), '.0%')} (≥90%); "
                     f"of copy {_num(h.get('copy_gb_per_s'), '.0f', ' GB/s')}: white_ratio "
                     f"{_num(h.get('white_ratio_of_copy'), '.0%')}, augment rot0 "
                     f"{_num(h.get('augment_rot0_of_copy'), '.0%')} rot1 {_num(h.get('augment_rot1_of_copy'), '.0%')}"
                     f" (≥70%); pixels max|Δ| {_num(h.get('pixel_max_abs_diff'), 'd')}, keep differs "
                     f"{_num(h.get('keep_differ_fraction'), '.2%')}")
        if b["errors"]:
            parts.append("gpu_bench failed: " + ", ".join(e["part"] for e in b["errors"]))
        if b["parts_not_finished"]:
            parts.append("gpu_bench not finished: " + ", ".join(b["parts_not_finished"]))
    bad = [f"{s['name']} {s['status']}" for s in summary["steps"] if s["status"] in ("failed", "timeout")]
    if bad:
        parts.append("steps: " + ", ".join(bad))
    majors = summary["versions"]["cuda_majors"]
    if len(set(majors.values())) > 1:  # the most common major, and what differs from it
        common = Counter(majors.values()).most_common(1)[0][0]
        parts.append(f"CUDA {common}, but " + ", ".join(f"{k} {v}" for k, v in majors.items() if v != common))
    parts.append(summary["device"].get("name") or "no GPU seen")
    wall, budget = summary.get("wall_s"), summary.get("budget_s")
    if wall is not None:
        parts.append(f"{wall:.0f}" + (f" of {budget:.0f}" if budget else "") + " s")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="verify.sh's output folder")
    p.add_argument("--started", type=float, help="when the run started, seconds since the epoch (for wall_s)")
    p.add_argument("--budget", type=float, help="the run's time budget, seconds (reported beside wall_s)")
    a = p.parse_args(argv)
    for stale in a.out.glob(".*.tmp"):  # a writer killed at its limit leaves these; $OUT keeps few files
        stale.unlink(missing_ok=True)
    summary = summarize(a.out, a.started, a.budget)
    tmp = a.out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, a.out / "summary.json")
    print(summary["final_line"], flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
