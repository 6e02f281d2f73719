"""Slides per minute and tiles/s of ``histofast tile`` on Dask distributed: 1 and 2 local worker processes
(``histofast.export.cluster``) on many small generated slides, against today's one-process export, in one run.

    python benchmarks/cluster_scaling.py             # 24 generated 2048² slides, 5 rounds, ~2 min on 2 cores
    python benchmarks/cluster_scaling.py --quick     # 8 slides of 1536², 1 round, ~30 s (too small to judge)

Configurations (each a fresh output folder per run, JPEG Q90, tile 256, stride 256):

- ``inline``: ``export_slides`` in this process with all cores (today's ``histofast tile``);
- ``1w x 1t``, ``2w x 1t``: 1 and 2 worker processes with one decode/encode thread each: the scaling of the
  cluster path itself (target ``2w x 1t`` ≥ 1.7× ``1w x 1t``);
- ``1w x Nt``: 1 worker process with all cores (N = cores): what ``--processes 1`` would give through Dask, the
  comparison for ``2w x 1t`` = ``histofast tile --processes 2`` on 2 cores.

The clusters start once (their start-up is reported apart); then ``--rounds`` rounds run every configuration once
each (round-robin, so a burst of load slows one run of each). Reported: median and min–max wall seconds, slides
per minute, grid tiles scored and kept tiles written per second, level-0 megapixels per second and per core, the
CPU seconds the run's processes used and the CPU seconds *other* processes used meanwhile (``/proc/stat``), and
the scheduler's overhead per task (no-op tasks). JSON (default ``.benchmarks/cluster_scaling.json``) with the
machine record.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import histofast as hf
from histofast.export import ExportOptions, export_slides
from histofast.export.cluster import export_slides_distributed, local_cluster
from histofast.utils.machine import machine_info


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and iowait), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and all its descendants (the clusters' nannies
    and workers), each counted once."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def noop(k: int) -> int:
    return k


def task_overhead_ms(client: Any, tasks: int = 500) -> float:
    """Milliseconds of scheduler round trip per task: ``tasks`` no-op tasks submitted and gathered."""
    start = time.perf_counter()
    client.gather(client.map(noop, range(tasks), pure=False))
    return (time.perf_counter() - start) / tasks * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 slides of 1536², 1 round")
    p.add_argument("--slides", type=int, default=24, help="generated slides (default 24)")
    p.add_argument("--size", type=int, default=2048, help="generated slide side, pixels (default 2048)")
    p.add_argument("--tile-size", type=int, default=256, help="tile side, pixels (default 256; stride = tile)")
    p.add_argument("--rounds", type=int, default=5, help="runs of every configuration (default 5)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "histofast" / "bench" / "cluster")
    p.add_argument("--json", type=Path, default=Path(".benchmarks") / "cluster_scaling.json")
    args = p.parse_args(argv)
    if args.quick:
        args.slides, args.size, args.rounds = 8, 1536, 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    folder = args.cache / f"{args.slides}x{args.size}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(args.slides):
        path = folder / f"slide-{k:03d}.svs"
        if not path.exists():
            hf.synth.write_slide(path, args.size, args.size, seed=k, tissue_fraction=0.5, min_level_size=256)
        paths.append(os.fspath(path))
    options = ExportOptions(args.tile_size, format="jpg")
    scratch = Path(tempfile.mkdtemp(prefix="histofast-cluster-bench-"))
    level_mp = args.slides * args.size * args.size / 1e6

    runs: dict[str, dict[str, Any]] = {}
    overhead: dict[str, float] = {}
    try:
        started = time.perf_counter()
        with local_cluster(1) as one, local_cluster(2) as two:
            startup = time.perf_counter() - started
            overhead = {"1 worker": task_overhead_ms(one), "2 workers": task_overhead_ms(two)}
            configs: dict[str, tuple[Callable[[Path], list], int]] = {
                "inline": (lambda out: export_slides(paths, out, options, progress=False), cores),
                "1w x 1t": (lambda out: export_slides_distributed(paths, out, options, one, threads=1,
                                                                  progress=False, rows=False), 1),
                "2w x 1t": (lambda out: export_slides_distributed(paths, out, options, two, threads=1,
                                                                  progress=False, rows=False), 2),
                f"1w x {cores}t": (lambda out: export_slides_distributed(paths, out, options, one,
                                                                         progress=False, rows=False),
                                   cores),
            }
            for name, (_, used) in configs.items():
                runs[name] = {"cores_used": used, "wall_s": [], "cpu_s": [], "others_cpu_s": []}
            for r in range(args.rounds):
                for name, (run, _) in configs.items():
                    out = scratch / f"{name.replace(' ', '')}-{r}"
                    cpu0, busy0 = tree_cpu_seconds(), busy_seconds()
                    start = time.perf_counter()
                    results = run(out)
                    wall = time.perf_counter() - start
                    cpu1, busy1 = tree_cpu_seconds(), busy_seconds()
                    failed = [x for x in results if x.status != "done"]
                    if failed:
                        print(f"{name}: {len(failed)} slides failed: {failed[0].error}", file=sys.stderr)
                        return 1
                    cpu = cpu1 - cpu0
                    others = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - cpu)
                    runs[name]["wall_s"].append(wall)
                    runs[name]["cpu_s"].append(cpu)
                    runs[name]["others_cpu_s"].append(others)
                    runs[name]["scored"] = sum(x.total for x in results)
                    runs[name]["kept"] = sum(x.kept for x in results)
                    print(f"round {r + 1}/{args.rounds} {name}: {wall:.2f} s, CPU {cpu:.1f} s, "
                          f"others {others if others is None else round(others, 1)} s", file=sys.stderr)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for r in runs.values():
        med = statistics.median(r["wall_s"])
        r.update(median_s=med, min_s=min(r["wall_s"]), max_s=max(r["wall_s"]),
                 slides_per_min=args.slides / med * 60, tiles_per_s=r["scored"] / med,
                 kept_tiles_per_s=r["kept"] / med, mp_per_s=level_mp / med,
                 mp_per_s_per_core=level_mp / med / r["cores_used"],
                 cpu_s_per_slide=statistics.median(r["cpu_s"]) / args.slides)
    base, two_name, full = runs["1w x 1t"], runs["2w x 1t"], runs[f"1w x {cores}t"]
    ratios = {
        "2w_vs_1w_median": base["median_s"] / two_name["median_s"],
        # per round (the two runs ran seconds apart, under about the same load)
        "2w_vs_1w_per_round": [a / b for a, b in zip(base["wall_s"], two_name["wall_s"])],
        "2w_vs_1w_fastest": base["min_s"] / two_name["min_s"],
        "2w_x_1t_vs_1w_x_all_cores": full["median_s"] / two_name["median_s"],
        "2w_x_1t_vs_inline": runs["inline"]["median_s"] / two_name["median_s"],
        # CPU seconds of the 2-worker run over the 1-worker run's: 1.0 = no extra work for running in parallel;
        # load from other processes hardly moves it, unlike wall time
        "cpu_2w_vs_1w": two_name["cpu_s_per_slide"] / base["cpu_s_per_slide"],
    }
    report = {
        "benchmark": "cluster_scaling", "machine": machine_info(), "cores": cores,
        "settings": {"slides": args.slides, "size": args.size, "tile_size": args.tile_size, "stride": args.tile_size,
                     "format": "jpg", "quality": 90, "rounds": args.rounds},
        "level_megapixels": level_mp, "cluster_startup_s": startup, "task_overhead_ms": overhead,
        "runs": runs, "ratios": ratios, "target": {"2w_vs_1w": 1.7, "met": ratios["2w_vs_1w_median"] >= 1.7},
        "load_average": os.getloadavg(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))

    print(f"{args.slides} slides of {args.size}², tile {args.tile_size}, JPEG Q90, {cores} cores; "
          f"{args.rounds} rounds; clusters started in {startup:.1f} s; scheduler overhead "
          + ", ".join(f"{k} {v:.2f} ms/task" for k, v in overhead.items()))
    print(f"{'config':<10}{'median s':>9}{'min-max s':>13}{'slides/min':>11}{'tiles/s':>9}{'kept/s':>8}"
          f"{'MP/s':>7}{'MP/s/core':>10}{'CPU s/slide':>12}{'others':>8}")
    for name, r in runs.items():
        known = [o for o in r["others_cpu_s"] if o is not None]
        others = f"{statistics.median(known) / r['median_s']:.1f}" if known else "?"
        print(f"{name:<10}{r['median_s']:>9.2f}{r['min_s']:>6.2f}–{r['max_s']:<6.2f}{r['slides_per_min']:>11.1f}"
              f"{r['tiles_per_s']:>9.0f}{r['kept_tiles_per_s']:>8.0f}{r['mp_per_s']:>7.1f}"
              f"{r['mp_per_s_per_core']:>10.1f}{r['cpu_s_per_slide']:>12.3f}{others:>8}")
    print(f"2w x 1t / 1w x 1t: {ratios['2w_vs_1w_median']:.2f}× (medians; {min(ratios['2w_vs_1w_per_round']):.2f}–"
          f"{max(ratios['2w_vs_1w_per_round']):.2f}× per round; fastest rounds {ratios['2w_vs_1w_fastest']:.2f}×; "
          f"target ≥ 1.7×); 2w x 1t / 1w x {cores}t: "
          f"{ratios['2w_x_1t_vs_1w_x_all_cores']:.2f}×; 2w x 1t / inline: {ratios['2w_x_1t_vs_inline']:.2f}×; "
          f"CPU per slide 2w / 1w: {ratios['cpu_2w_vs_1w']:.2f}; "
          f"JSON {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
