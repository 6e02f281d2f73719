"""GPU end to end on one device, one process, the same generated slides: (1) ``tile_grid`` with GPU decoding
beside the CPU path on all cores and the seed's OpenSlide + OpenCV recipe, and the pixel contract (GPU-decoded
pixels against the CPU fast path); (2) ``iter_tiles`` (float16 NCHW, rot90/flip/shift) against the CPU path;
(3) ``Pipeline`` feeding ``TwoLevelCNN`` training steps at the paper's settings: the GPU busy fraction;
(4) the ``white_ratio`` and ``augment`` kernels as a fraction of the device's copy bandwidth.

    python benchmarks/gpu/gpu_bench.py                      # one H200: 16384² slide, ~1-2 min
    python benchmarks/gpu/gpu_bench.py --big                # also a 65536×32768 slide for (1)
    python benchmarks/gpu/gpu_bench.py --device cpu --decode nvimgcodec-cpu --quick   # no GPU: 2048², seconds

Targets are reported, never asserted: (1) ≥ 3× the CPU path; (3) GPU busy ≥ 90 %; (4) ≥ 70 % of copy
bandwidth. JSON (with ``histofast.utils.machine.machine_info``) in ``--json``, written atomically at the start and
again as each part ends, so a run killed at a time limit leaves the parts done so far (``finished`` false,
``parts_done`` beside ``parts``); progress on stderr, a short table on stdout. ``--slides-only`` writes (or finds)
the slides and stops. Exit status: 0, 1 when a part failed (the JSON says which), 2 when nothing could run.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import inspect
import json
import math
import os
import statistics
import sys
import time
import traceback
from itertools import zip_longest
from pathlib import Path
from typing import Any, Callable

import numpy as np

import histofast as hf
from histofast import synth
from histofast.benchmark import methods as recipe_methods
from histofast.benchmark.slide import synthetic_slide
from histofast.benchmark.tiles_per_second import _spread_rows
from histofast.ops import IMAGENET_MEAN, IMAGENET_STD
from histofast.utils.atomic import atomic_open
from histofast.utils.machine import load_average, machine_info
from histofast.utils.paths import writable_cache_dir

MAX_WHITE = 0.5
PARTS = ("tile_grid", "pixels", "iter_tiles", "pipeline", "kernels")
DECODES = ("gpu", "cpu", "nvimgcodec-cpu", "auto")
BIG = (65536, 32768)  # --big: (width, height) pixels
TARGETS = {"tile_grid_x_cpu": 3.0, "gpu_busy": 0.90, "kernel_of_copy": 0.70}
# The paper's two-level settings (2560² images as 81 patches of 512 at stride 256) and the reduced --quick ones.
PAPER = dict(image_size=2560, tile_size=512, stride=256, patch_widths=(16, 32, 64, 128, 256), image_widths=(64, 128),
             batch_size=2)
REDUCED = dict(image_size=512, tile_size=128, stride=128, patch_widths=(8, 16, 32, 64), image_widths=(16, 32),
               batch_size=2)


class Log:
    """Progress lines on stderr with the seconds since start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[gpu_bench {time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


class Clock:
    """Wall time of host calls with the device synchronised at both ends (a no-op sync on the CPU)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.torch: Any = None
        if self.cuda:
            import torch

            self.torch = torch
            self.device = torch.device(device)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """(seconds, fn's result) with the device idle before and drained after."""
        self.sync()
        start = time.perf_counter()
        result = fn()
        self.sync()
        return time.perf_counter() - start, result


def spread(seconds: list[float]) -> dict[str, Any]:
    """Median, min, max and every value of a list of seconds."""
    return {"seconds": statistics.median(seconds), "seconds_min": min(seconds), "seconds_max": max(seconds),
            "all_seconds": [round(s, 6) for s in seconds]}


def round_robin(jobs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], repeats: int, clock: Clock,
                log: Log) -> dict[str, tuple[list[float], Any]]:
    """Each job's (timed run, warm-up) once untimed, then ``repeats`` rounds timing every job once, so a burst of
    load slows one run of each, not all runs of one. Returns name → (seconds per run, last run's result)."""
    out: dict[str, tuple[list[float], Any]] = {name: ([], None) for name in jobs}
    for name, (_, warm) in jobs.items():
        seconds, _ = clock.time(warm)
        log(f"warm-up {name}: {seconds:.2f} s")
    for r in range(repeats):
        for name, (run, _) in jobs.items():
            gc.collect()
            seconds, result = clock.time(run)
            out[name] = (out[name][0] + [seconds], result)
            log(f"run {r + 1}/{repeats} {name}: {seconds:.3f} s")
    return out


def to_numpy(x: Any) -> np.ndarray:
    """A batch's images on the host (torch CUDA/CPU tensors, CuPy or numpy)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return np.asarray(x)


def takes_decode(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` has the ``decode=`` argument (the decode API)."""
    try:
        return "decode" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def require_decode_api() -> None:
    """Raise a clear error when this histofast predates ``decode=`` in tile_grid, iter_tiles and Pipeline."""
    missing = [f.__name__ for f in (hf.tile_grid, hf.iter_tiles) if not takes_decode(f)]
    if missing:
        raise RuntimeError(f"this histofast has no decode= in {', '.join(missing)} (the decode API has not landed)")


# ---------------------------------------------------------------------------------------------------- slides


def make_slide(width: int, height: int, cache_dir: str | None, log: Log) -> Path:
    """The generated benchmark slide of ``width``×``height`` pixels, written once and reused (square ones are
    ``histofast bench``'s, shared with it); the file name carries a hash of synth.py."""
    if width == height:
        return synthetic_slide(width, cache_dir, False, lambda message, **_: log(message))
    key = hashlib.sha256(Path(synth.__file__).read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else writable_cache_dir("bench")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synth-{width}x{height}-seed0-tissue0.5-{key}.svs"
    if not path.is_file():
        log(f"writing a {width}×{height} synthetic slide to {path} (once; later runs reuse it)")
        start = time.perf_counter()
        synth.write_slide(path, width, height, seed=0, tissue_fraction=0.5)
        log(f"slide written in {time.perf_counter() - start:.1f} s")
    return path


def slide_record(path: Path) -> dict[str, Any]:
    with hf.open_slide(path) as slide:
        width, height = slide.dimensions
        backend = slide.backend
    return {"path": str(path.resolve()), "width": width, "height": height, "file_bytes": path.stat().st_size,
            "histofast_backend": backend}


# ------------------------------------------------------------------------------------ (1) tile_grid + pixels


def part_tile_grid(slide: dict[str, Any], a: argparse.Namespace, clock: Clock, log: Log) -> dict[str, Any]:
    """tile_grid with ``a.decode`` on ``a.device`` beside the CPU path (all cores) and the recipe on sample rows."""
    require_decode_api()
    path, width, height = slide["path"], slide["width"], slide["height"]
    tile, stride = a.tile_size, a.stride
    rows, cols = hf.ops.grid_shape(height, width, tile, stride)
    area = width * height

    def accelerated() -> Any:
        return hf.tile_grid(path, tile, stride, max_white=MAX_WHITE, device=a.device, decode=a.decode)

    def cpu() -> Any:
        return hf.tile_grid(path, tile, stride, max_white=MAX_WHITE, device="cpu", decode="cpu")

    jobs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {"accelerated": (accelerated, accelerated),
                                                                     "cpu": (cpu, cpu)}
    skipped: list[dict[str, str]] = []
    recipe_rows: list[int] = []
    if not recipe_methods.have_cv2():
        skipped.append({"part": "tile_grid recipe", "why": "OpenCV is not installed"})
    elif not recipe_methods.openslide_reads(Path(path)):
        skipped.append({"part": "tile_grid recipe", "why": "OpenSlide is not installed or does not read this slide"})
    else:
        recipe_rows = _spread_rows(rows, math.ceil(a.recipe_tiles / cols))
        jobs["recipe"] = (recipe_methods.recipe(Path(path), tile, stride, recipe_rows, cols,
                                                area * len(recipe_rows) // rows),
                          recipe_methods.recipe(Path(path), tile, stride, recipe_rows[:1], cols, 0))
    log(f"(1) tile_grid {width}×{height}, tile {tile} stride {stride}: {rows}×{cols} tiles; "
        f"{', '.join(jobs)}" + (f" (recipe: {len(recipe_rows)} rows)" if recipe_rows else ""))
    timed = round_robin(jobs, a.repeats, clock, log)

    methods: dict[str, Any] = {}
    for name, (seconds, result) in timed.items():
        s = spread(seconds)
        scored = rows * cols if name != "recipe" else len(recipe_rows) * cols
        covered = area if name != "recipe" else area * len(recipe_rows) // rows
        methods[name] = {**s, "tiles_scored": scored, "tiles_per_s": scored / s["seconds"],
                         "mp_per_s": covered / s["seconds"] / 1e6,
                         "kept": len(result) if name != "recipe" else result.kept,
                         "device": {"accelerated": a.device, "cpu": "cpu"}.get(name, "cpu"),
                         "decode": {"accelerated": a.decode, "cpu": "cpu"}.get(name, "openslide"),
                         "decoder": getattr(result, "decoder", None) if name != "recipe" else "openslide"}
    acc_grid, cpu_grid = timed["accelerated"][1], timed["cpu"][1]
    acc_keep, cpu_keep = acc_grid.white_ratio <= MAX_WHITE, cpu_grid.white_ratio <= MAX_WHITE
    out: dict[str, Any] = {
        "slide": slide["path"], "size": [width, height], "tile_size": tile, "stride": stride, "grid": [rows, cols],
        "methods": methods,
        "x_cpu": methods["cpu"]["seconds"] / methods["accelerated"]["seconds"],
        "keep_vs_cpu": {"tiles": int(acc_keep.size), "differ": int((acc_keep != cpu_keep).sum()),
                        "differ_fraction": float((acc_keep != cpu_keep).mean()),
                        "white_ratio_max_abs_diff": float(np.abs(acc_grid.white_ratio - cpu_grid.white_ratio).max())},
        "skipped": skipped,
    }
    if "recipe" in methods:
        recipe_ratio = timed["recipe"][1].extra["white_ratio"]
        out["x_recipe"] = methods["accelerated"]["mp_per_s"] / methods["recipe"]["mp_per_s"]
        out["cpu_x_recipe"] = methods["cpu"]["mp_per_s"] / methods["recipe"]["mp_per_s"]
        out["recipe_rows"] = recipe_rows
        out["keep_vs_recipe"] = {}
        for name, grid in (("accelerated", acc_grid), ("cpu", cpu_grid)):
            mine = grid.white_ratio[recipe_rows]
            differ = (mine <= MAX_WHITE) != (recipe_ratio <= MAX_WHITE)
            out["keep_vs_recipe"][name] = {"tiles": int(differ.size), "differ": int(differ.sum()),
                                           "white_ratio_max_abs_diff": float(np.abs(mine - recipe_ratio).max())}
    return out


def part_pixels(slide: dict[str, Any], a: argparse.Namespace, log: Log) -> dict[str, Any]:
    """The pixel contract: every tile of a non-overlapping grid (the level, less a partial edge strip) decoded
    by ``a.decode`` on ``a.device`` against the CPU fast path, as uint8 tiles through ``iter_tiles``."""
    require_decode_api()
    path, tile = slide["path"], a.tile_size
    options = dict(max_white=1.0, batch_size=32, augment=None, out_dtype="uint8", layout="NHWC")
    acc = hf.iter_tiles(path, tile, tile, device=a.device, decode=a.decode, **options)
    cpu = hf.iter_tiles(path, tile, tile, device="cpu", decode="cpu", **options)
    maximum = differ_values = tiles = differ_tiles = keep_differ = 0
    total = 0
    values = 0
    for x, y in zip_longest(acc, cpu):
        if x is None or y is None:
            raise RuntimeError("the two paths gave different numbers of tiles")
        if not np.array_equal(x.coords, y.coords):
            raise RuntimeError("the two paths gave tiles at different coordinates")
        d = np.abs(to_numpy(x.images).astype(np.int16) - to_numpy(y.images).astype(np.int16))
        maximum = max(maximum, int(d.max()))
        total += int(d.sum(dtype=np.int64))
        values += d.size
        differ_values += int(np.count_nonzero(d))
        per_tile = d.reshape(len(d), -1).max(1)
        differ_tiles += int(np.count_nonzero(per_tile))
        tiles += len(d)
        keep_differ += int(((x.white_ratio <= MAX_WHITE) != (y.white_ratio <= MAX_WHITE)).sum())
    log(f"(1) pixels: {tiles} tiles of {tile}², max |diff| {maximum}, mean {total / max(values, 1):.4f}")
    return {"slide": path, "tile_size": tile, "tiles": tiles, "values": values,
            "decoder": getattr(acc, "decoder", None), "cpu_decoder": getattr(cpu, "decoder", None),
            "max_abs_diff": maximum, "mean_abs_diff": total / max(values, 1),
            "values_differ_fraction": differ_values / max(values, 1), "tiles_differ": differ_tiles,
            "keep_differ_fraction": keep_differ / max(tiles, 1),
            "note": "uint8 RGB of every whole tile of a tile-size grid (stride = tile), all kept (max_white 1.0); "
                    "keep_differ_fraction at max_white 0.5 on these tiles"}


# -------------------------------------------------------------------------------------------- (2) iter_tiles


def part_iter_tiles(slide: dict[str, Any], a: argparse.Namespace, clock: Clock, log: Log) -> dict[str, Any]:
    """iter_tiles with rot90/flip/shift into float16 NCHW batches: ``a.decode`` on ``a.device`` against the CPU."""
    require_decode_api()
    path, tile, stride = slide["path"], a.tile_size, a.stride
    options = dict(max_white=MAX_WHITE, batch_size=64, augment=hf.Augment(rot90=True, flip=True, max_shift=16, seed=0),
                   out_dtype="float16", layout="NCHW", mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def run(device: str, decode: str) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            stream = hf.iter_tiles(path, tile, stride, device=device, decode=decode, **options)
            tiles = batches = 0
            for batch in stream:  # dropped at once: its buffer is recycled, as a training loop's would be
                tiles += len(batch)
                batches += 1
            return {"tiles": tiles, "batches": batches, "decoder": getattr(stream, "decoder", None)}

        return go

    jobs = {"accelerated": (run(a.device, a.decode),) * 2, "cpu": (run("cpu", "cpu"),) * 2}
    log(f"(2) iter_tiles tile {tile} stride {stride}, float16 NCHW, rot90/flip/shift 16, batches of 64")
    timed = round_robin(jobs, a.repeats, clock, log)
    area = slide["width"] * slide["height"]
    methods = {}
    for name, (seconds, result) in timed.items():
        s = spread(seconds)
        methods[name] = {**s, **result, "tiles_per_s": result["tiles"] / s["seconds"],
                         "mp_per_s": area / s["seconds"] / 1e6,
                         "output_gb_per_s": result["tiles"] * 3 * tile * tile * 2 / s["seconds"] / 1e9,
                         "device": a.device if name == "accelerated" else "cpu",
                         "decode": a.decode if name == "accelerated" else "cpu"}
    return {"slide": path, "tile_size": tile, "stride": stride, "methods": methods,
            "x_cpu": methods["cpu"]["seconds"] / methods["accelerated"]["seconds"],
            "options": {"batch_size": 64, "augment": "rot90,flip,shift=16", "out_dtype": "float16", "layout": "NCHW",
                        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}


# ------------------------------------------------------------------------------------ (3) Pipeline → model


def part_pipeline(slide: dict[str, Any], a: argparse.Namespace, clock: Clock, log: Log) -> dict[str, Any]:
    """TwoLevelCNN forward + backward + Adam fed by ``Pipeline`` (torch backend) against the same steps on batches
    already on the device: GPU busy fraction = model-only step time / pipeline-fed step time."""
    import torch

    from histofast.models import two_level_cnn
    from histofast.train.loop import amp_dtype, forward, prepare_model

    require_decode_api()  # Pipeline's own decode= is checked by the call (an unknown keyword is a TypeError)
    cfg = dict(REDUCED if a.quick else PAPER)
    device = torch.device(a.device)
    amp = amp_dtype("auto", device)
    t0 = time.perf_counter()
    pipe = hf.Pipeline([slide["path"]], cfg["tile_size"], cfg["stride"], labels=["C0"], mode="images",
                       image_size=cfg["image_size"], batch_size=cfg["batch_size"], dtype=a.pipeline_dtype,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=hf.Augment(rot90=True, flip=True, max_shift=16),
                       backend="torch", device=a.device, decode=a.decode, progress=False, seed=0)
    build_s = time.perf_counter() - t0
    steps_per_epoch = len(pipe)
    if steps_per_epoch == 0:
        raise RuntimeError(f"no kept {cfg['image_size']}² windows in {slide['path']}")
    log(f"(3) {pipe}: built in {build_s:.1f} s")

    torch.manual_seed(0)
    model = two_level_cnn(4, tile_size=cfg["tile_size"], image_size=cfg["image_size"], patch_stride=cfg["stride"],
                          patch_widths=cfg["patch_widths"], image_widths=cfg["image_widths"])
    model = prepare_model(model, device, channels_last=True, compile=False).train()
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], 1e-3)
    channels_last = device.type == "cuda"

    def step(images: Any, labels: Any) -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = forward(model, images, labels, "finetune", channels_last=channels_last).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Pre-made device batches: the first few of an epoch, copied so that no buffer is recycled under them.
    made = []
    stream = iter(pipe)
    try:
        for batch in stream:
            made.append((batch["image"].clone(), batch["label"].clone()))
            if len(made) == min(4, steps_per_epoch):
                break
    finally:
        getattr(stream, "close", lambda: None)()  # stop the epoch's lanes now, not when collected
    shape = list(made[0][0].shape)
    for k in range(a.warmup):
        step(*made[k % len(made)])
    clock.sync()
    per_step = []
    for _ in range(a.repeats):
        seconds, _ = clock.time(lambda: [step(*made[k % len(made)]) for k in range(a.model_steps)])
        per_step.append(seconds / a.model_steps)
    model_s = statistics.median(per_step)
    log(f"(3) model only: {model_s * 1e3:.1f} ms/step ({shape}, amp {amp})")

    fed_steps = 0
    startup = []
    steady = 0.0
    for epoch in range(1, a.pipeline_epochs + 1):
        pipe.set_epoch(epoch)
        clock.sync()
        start = time.perf_counter()
        stream = iter(pipe)
        first = next(stream)
        first_at = time.perf_counter()
        startup.append(first_at - start)
        step(first["image"], first["label"])
        n = 1
        for batch in stream:
            step(batch["image"], batch["label"])
            n += 1
        clock.sync()
        if n > 1:  # steady state: from the first batch's arrival, so the pipeline's start-up is not counted
            steady += time.perf_counter() - first_at
            fed_steps += n - 1
    fed_s = steady / fed_steps if fed_steps else float("nan")
    busy = model_s / fed_s if fed_steps else None
    log(f"(3) pipeline-fed: {fed_s * 1e3:.1f} ms/step over {fed_steps} steps; busy "
        + ("—" if busy is None else f"{busy:.0%}"))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"slide": slide["path"], "settings": {**cfg, "patch_widths": list(cfg["patch_widths"]),
                                                 "image_widths": list(cfg["image_widths"])},
            "reduced": bool(a.quick), "device": a.device, "decode": a.decode, "dtype": a.pipeline_dtype,
            "amp": str(amp), "batch_shape": shape,
            "pipeline": repr(pipe), "pipeline_build_s": build_s, "steps_per_epoch": steps_per_epoch,
            "model_step_s": model_s, "model_step_all_s": per_step, "fed_step_s": fed_s, "fed_steps": fed_steps,
            "first_batch_s": startup, "images_per_s_fed": cfg["batch_size"] / fed_s if fed_steps else None,
            "busy": busy, "peak_gib": peak,
            "busy_definition": "model-only step time on pre-made device batches / step time with the pipeline "
                               "feeding it (from the first batch of each epoch to the last step, synchronised)"}


# ------------------------------------------------------------------------------------------------ (4) kernels


def part_kernels(slide: dict[str, Any], a: argparse.Namespace, log: Log) -> dict[str, Any]:
    """white_ratio and augment (rot90 0 and 1 apart) on the slide's pixels on the device, timed with CUDA events,
    as a fraction of a large device-to-device copy's bandwidth (bytes read + written). With ``--device cpu
    --cpu-kernels`` the same on torch CPU tensors, timed by the host clock against a host copy (a smoke test)."""
    import torch

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    side = min(a.kernel_region, slide["width"], slide["height"])
    with hf.open_slide(slide["path"]) as s:
        host = s.read_region((0, 0), 0, (side, side))
    region = torch.from_numpy(np.ascontiguousarray(host)).to(device)

    def once_ms(fn: Callable[[], Any]) -> float:
        if not cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()  # on the current stream, the one histofast.ops launches on
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def median_ms(fn: Callable[[], Any], rounds: int) -> tuple[float, list[float]]:
        """Median milliseconds of ``rounds`` calls after ``a.kernel_warmup`` untimed ones, and every time."""
        for _ in range(a.kernel_warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        times = [once_ms(fn) for _ in range(rounds)]
        return statistics.median(times), times

    def copy_ms(n: int) -> tuple[float, list[float]]:
        """The ceiling: a copy of ``n`` random bytes (never zeros) from one device buffer to another."""
        src = torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        return median_ms(lambda: dst.copy_(src), a.kernel_rounds)

    n = int(a.copy_gib * 2**30)
    ms, copy_all = copy_ms(n)
    copy_bw = 2 * n / (ms / 1e3)  # bytes read plus bytes written per second
    if cuda:
        torch.cuda.empty_cache()
    log(f"(4) device copy: {copy_bw / 1e9:.0f} GB/s (read + write)")
    out: dict[str, Any] = {"region": [side, side], "copy": {"bytes": 2 * n, "ms": ms, "all_ms": copy_all,
                                                            "gb_per_s": copy_bw / 1e9}}

    ratio_out = hf.ops.white_ratio(region, a.tile_size, a.stride)
    ms, all_ms = median_ms(lambda: hf.ops.white_ratio(region, a.tile_size, a.stride, out=ratio_out), a.kernel_rounds)
    moved = region.numel() + ratio_out.numel() * 4
    cpu_ratio = hf.ops.white_ratio(host, a.tile_size, a.stride)
    out["white_ratio"] = {"tile_size": a.tile_size, "stride": a.stride, "bytes": moved, "ms": ms, "all_ms": all_ms,
                          "gb_per_s": moved / (ms / 1e3) / 1e9, "of_copy": moved / (ms / 1e3) / copy_bw,
                          "equals_cpu": bool(np.array_equal(to_numpy(ratio_out), cpu_ratio))}
    log(f"(4) white_ratio: {ms:.3f} ms, {out['white_ratio']['of_copy']:.0%} of copy")

    rng = np.random.default_rng(0)
    count, tile = a.augment_tiles, a.tile_size
    origins = rng.integers(0, side - tile + 1, (count, 2))
    batch = torch.empty((count, 3, tile, tile), dtype=torch.float16, device=device)
    for turns in (0, 1):
        rot90 = np.full(count, turns)

        def run(rot90: np.ndarray = rot90) -> Any:
            return hf.ops.augment(region, origins, tile, rot90=rot90, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                  out_dtype="float16", layout="NCHW", out=batch)

        ms, all_ms = median_ms(run, a.kernel_rounds)
        moved = count * tile * tile * 3 + batch.numel() * 2  # uint8 tiles read once, float16 written once
        few = slice(0, min(8, count))
        cpu = hf.ops.augment(host, origins[few], tile, rot90=rot90[few], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             out_dtype="float16", layout="NCHW")
        gpu = to_numpy(run()[few])
        out[f"augment_rot{turns}"] = {
            "tiles": count, "tile_size": tile, "out_dtype": "float16", "layout": "NCHW", "bytes": moved, "ms": ms,
            "all_ms": all_ms, "gb_per_s": moved / (ms / 1e3) / 1e9, "of_copy": moved / (ms / 1e3) / copy_bw,
            "max_abs_diff_vs_cpu": float(np.abs(gpu.astype(np.float32) - cpu.astype(np.float32)).max())}
        log(f"(4) augment rot90={turns}: {ms:.3f} ms, {out[f'augment_rot{turns}']['of_copy']:.0%} of copy")
    return out


# ------------------------------------------------------------------------------------------------ the report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few figures a summary line carries (None where a part did not run)."""
    grids = report.get("tile_grid") or []
    first = grids[0] if grids else {}
    pixels = report.get("pixels") or {}
    kernels = report.get("kernels") or {}
    pipeline = report.get("pipeline") or {}
    return {
        "tile_grid_x_cpu": first.get("x_cpu"),
        "tile_grid_x_recipe": first.get("x_recipe"),
        "tile_grid_mp_per_s": first.get("methods", {}).get("accelerated", {}).get("mp_per_s"),
        "big_tile_grid_x_cpu": grids[1].get("x_cpu") if len(grids) > 1 else None,
        "keep_differ_fraction": first.get("keep_vs_cpu", {}).get("differ_fraction"),
        "pixel_max_abs_diff": pixels.get("max_abs_diff"),
        "pixel_mean_abs_diff": pixels.get("mean_abs_diff"),
        "iter_tiles_x_cpu": (report.get("iter_tiles") or {}).get("x_cpu"),
        "gpu_busy": pipeline.get("busy"),
        "copy_gb_per_s": kernels.get("copy", {}).get("gb_per_s"),
        "white_ratio_of_copy": kernels.get("white_ratio", {}).get("of_copy"),
        "augment_rot0_of_copy": kernels.get("augment_rot0", {}).get("of_copy"),
        "augment_rot1_of_copy": kernels.get("augment_rot1", {}).get("of_copy"),
    }


def targets(head: dict[str, Any], on_gpu: bool) -> list[dict[str, Any]]:
    """Each target with its value and whether it was met (None when not measured, or not on a GPU)."""
    rows = [("tile_grid_x_cpu", TARGETS["tile_grid_x_cpu"], "tile_grid GPU ≥ 3× the CPU path on all cores"),
            ("gpu_busy", TARGETS["gpu_busy"], "GPU busy ≥ 90 % with the Pipeline feeding TwoLevelCNN"),
            ("white_ratio_of_copy", TARGETS["kernel_of_copy"], "white_ratio ≥ 70 % of copy bandwidth"),
            ("augment_rot0_of_copy", TARGETS["kernel_of_copy"], "augment rot90=0 ≥ 70 % of copy bandwidth"),
            ("augment_rot1_of_copy", TARGETS["kernel_of_copy"], "augment rot90=1 ≥ 70 % of copy bandwidth")]
    out = []
    for key, target, text in rows:
        value = head.get(key)
        met = None if value is None or not on_gpu else bool(value >= target)
        out.append({"name": key, "target": target, "value": value, "met": met, "what": text})
    return out


def print_table(report: dict[str, Any]) -> None:
    head, device = report["headline"], report["config"]["device"]

    def fmt(value: Any, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    print(f"gpu_bench on {report['machine'].get('gpu')} (device {device}, decode {report['config']['decode']})")
    for grid in report.get("tile_grid") or []:
        for name, m in grid["methods"].items():
            print(f"  tile_grid {grid['size'][0]}×{grid['size'][1]} {name:12s} {m['seconds']:8.3f} s "
                  f"{m['mp_per_s']:9.1f} MP/s  decoder {m['decoder']}")
        print(f"  tile_grid × cpu {fmt(grid.get('x_cpu'), '.2f')}, × recipe {fmt(grid.get('x_recipe'), '.1f')}, "
              f"keep differs on {grid['keep_vs_cpu']['differ']} of {grid['keep_vs_cpu']['tiles']} tiles")
    print(f"  pixels: max |diff| {fmt(head['pixel_max_abs_diff'], 'd')}, "
          f"mean {fmt(head['pixel_mean_abs_diff'], '.4f')}")
    print(f"  iter_tiles × cpu {fmt(head['iter_tiles_x_cpu'], '.2f')}; GPU busy {fmt(head['gpu_busy'], '.0%')}")
    print(f"  kernels of copy ({fmt(head['copy_gb_per_s'], '.0f')} GB/s): white_ratio "
          f"{fmt(head['white_ratio_of_copy'], '.0%')}, augment rot0 {fmt(head['augment_rot0_of_copy'], '.0%')}, "
          f"rot1 {fmt(head['augment_rot1_of_copy'], '.0%')}")
    for t in report["targets"]:
        state = {True: "met", False: "MISSED", None: "not judged"}[t["met"]]
        print(f"  target {t['what']}: {fmt(t['value'], '.3g')} ({state})")
    for s in report["skipped"]:
        print(f"  skipped {s['part']}: {s['why']}")
    for e in report["errors"]:
        print(f"  FAILED {e['part']}: {e['error']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="where the accelerated path runs: cuda, cuda:N or cpu")
    p.add_argument("--decode", default="gpu", choices=DECODES, help="the accelerated path's decoder (default gpu)")
    p.add_argument("--quick", action="store_true",
                   help="a 2048² slide, 2 rounds, the reduced two-level model (a smoke test of seconds)")
    p.add_argument("--big", action="store_true", help=f"also time (1) on a {BIG[0]}×{BIG[1]} slide (costly to write)")
    p.add_argument("--size", type=int, help="side of the generated square slide, pixels (default 16384; 2048 quick)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--slides-only", action="store_true",
                   help="write (or find in the cache) the generated slides, then stop: no device, no JSON")
    p.add_argument("--tile-size", type=int, default=512, help="tile side, pixels (default 512)")
    p.add_argument("--stride", type=int, default=256, help="grid stride, pixels (default 256)")
    p.add_argument("--repeats", type=int, help="timed rounds after one warm-up; medians (default 3; 2 quick)")
    p.add_argument("--recipe-tiles", type=int, help="tiles the recipe scores, as whole rows (default 256; 16 quick)")
    p.add_argument("--pipeline-dtype", default="float32", choices=("float32", "float16", "uint8"),
                   help="Pipeline batch dtype (default float32, as histofast train)")
    p.add_argument("--pipeline-epochs", type=int, default=2, help="pipeline-fed epochs timed (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="model warm-up steps (default 3)")
    p.add_argument("--model-steps", type=int, default=5, help="model-only steps per round (default 5)")
    p.add_argument("--kernel-region", type=int, default=8192, help="kernel input side, pixels (default 8192)")
    p.add_argument("--augment-tiles", type=int, default=256, help="tiles per augment call (default 256)")
    p.add_argument("--kernel-rounds", type=int, default=20, help="timed kernel calls, median (default 20)")
    p.add_argument("--kernel-warmup", type=int, default=3, help="untimed kernel calls first (default 3)")
    p.add_argument("--cpu-kernels", action="store_true",
                   help="with --device cpu, run (4) on the CPU too (host copy as the ceiling): a smoke test, no target")
    p.add_argument("--copy-gib", type=float, default=2.0, help="device-to-device copy size, GiB (default 2)")
    p.add_argument("--cache-dir", help="where generated slides are kept (default: histofast bench's cache)")
    p.add_argument("--json", type=Path, default=Path(".benchmarks") / "gpu_bench.json", help="the JSON report")
    a = p.parse_args(argv)
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    bad = [x for x in a.parts if x not in PARTS]
    if bad or not a.parts:
        p.error(f"--parts {','.join(bad) or '(empty)'}: expected a subset of {','.join(PARTS)}")
    a.size = a.size or (2048 if a.quick else 16384)
    a.repeats = a.repeats or (2 if a.quick else 3)
    a.recipe_tiles = a.recipe_tiles or (16 if a.quick else 256)
    if a.quick:
        a.pipeline_epochs, a.warmup, a.model_steps = 1, 1, 2
        a.kernel_rounds, a.kernel_warmup, a.copy_gib, a.augment_tiles = 5, 1, 0.125, 32
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    log = Log()
    sizes = [(a.size, a.size)] + ([BIG] if a.big else [])
    if a.slides_only:
        for width, height in sizes:
            make_slide(width, height, a.cache_dir, log)
        return 0
    on_gpu = a.device.startswith("cuda")
    report: dict[str, Any] = {
        "benchmark": "gpu_bench", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "finished": False, "parts": [], "parts_done": [],
        "machine": machine_info(), "load_average": {"before": load_average()},
        "config": {k: os.fspath(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "slides": [], "tile_grid": [], "pixels": None, "iter_tiles": None, "pipeline": None, "kernels": None,
        "skipped": [] if on_gpu else [{"part": "targets", "why": "the targets are for a GPU; not judged on the CPU"}],
        "errors": [], "seconds": {},
    }

    def save() -> None:
        """The report as it stands, written atomically: a reader sees the last whole version."""
        report["headline"] = headline(report)
        report["targets"] = targets(report["headline"], on_gpu)
        report["seconds"]["total"] = time.perf_counter() - log.start
        a.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(a.json) as f:
            json.dump(report, f, indent=1, default=float)
            f.write("\n")

    save()
    status = 0
    try:
        if on_gpu and not hf.cuda_available():
            raise RuntimeError(f"--device {a.device}: no CUDA device is visible to histofast "
                               f"(build: {hf.build_info()})")
        clock = Clock(a.device)
        for width, height in sizes:
            t0 = time.perf_counter()
            path = make_slide(width, height, a.cache_dir, log)
            report["slides"].append({**slide_record(path), "prepare_s": time.perf_counter() - t0})
    except Exception as e:  # nothing can run without the device or the slide
        report["errors"].append({"part": "setup", "error": f"{type(e).__name__}: {e}"})
        log(f"setup failed: {e}")
        status = 2
    if status == 0:
        slide = report["slides"][0]
        plan: list[tuple[str, Callable[[], Any]]] = []
        if "tile_grid" in a.parts:
            for s in report["slides"]:
                plan.append(("tile_grid", lambda s=s: report["tile_grid"].append(part_tile_grid(s, a, clock, log))))
        if "pixels" in a.parts:
            plan.append(("pixels", lambda: report.__setitem__("pixels", part_pixels(slide, a, log))))
        if "iter_tiles" in a.parts:
            plan.append(("iter_tiles", lambda: report.__setitem__("iter_tiles", part_iter_tiles(slide, a, clock, log))))
        if "pipeline" in a.parts:
            plan.append(("pipeline", lambda: report.__setitem__("pipeline", part_pipeline(slide, a, clock, log))))
        if "kernels" in a.parts:
            if on_gpu or a.cpu_kernels:
                plan.append(("kernels", lambda: report.__setitem__("kernels", part_kernels(slide, a, log))))
            else:
                report["skipped"].append({"part": "kernels", "why": "needs a CUDA device (fractions of the device's "
                                                                    "copy bandwidth)"})
        report["parts"] = [name for name, _ in plan]
        save()
        for name, run in plan:
            t0 = time.perf_counter()
            try:
                run()
            except Exception as e:  # one part failing never stops the others; the JSON records it
                report["errors"].append({"part": name, "error": f"{type(e).__name__}: {e}",
                                         "traceback": traceback.format_exc(limit=8)[-3000:]})
                log(f"{name} FAILED: {type(e).__name__}: {e}")
                status = 1
            report["seconds"][name] = report["seconds"].get(name, 0.0) + time.perf_counter() - t0
            report["parts_done"].append(name)
            for grid in report["tile_grid"]:
                report["skipped"] += [s for s in grid.pop("skipped", []) if s not in report["skipped"]]
            save()
            if on_gpu:
                import torch

                gc.collect()
                torch.cuda.empty_cache()
    report["load_average"]["after"] = load_average()
    report["finished"] = True
    save()
    print_table(report)
    print(f"JSON: {a.json.resolve()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
