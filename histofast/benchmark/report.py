"""The results of ``histofast bench``: timings per method (``Result``), ratios against the recipe, the decode
limit and tile_grid measured in the same run, the targets, the consistency checks, the table and the JSON record."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .flags import LABELS, PEERS
from .methods import MAX_WHITE, Work

# (name, method, reference, minimum ratio of MP/s, stride or None for every stride measured)
TARGETS = (
    ("tile_grid >= 10x recipe at stride 256", "tile_grid", "recipe", 10.0, 256),
    ("tile_grid >= 0.85x decode limit", "tile_grid", "decode", 0.85, None),
    ("iter_tiles >= 0.7x decode limit", "iter_tiles", "decode", 0.7, None),
    ("skip_background >= 2.5x tile_grid (70% glass)", "skip_background", "tile_grid", 2.5, None),
    ("tile_grid at mpp x2 (resampled) >= 0.85x tile_grid", "resampled", "tile_grid", 0.85, None),
    ("DICOM fast path >= 0.9x decode limit", "dicom", "decode", 0.9, None),
)
TARGET_GLASS = 0.7  # the skip_background target is for slides this much glass (measured), give or take 0.02
SKIP_AGREEMENT = 0.999  # skip_background: share of keep decisions equal to tile_grid's, at least
SKIP_NEAR = 0.05  # and every differing tile's white ratio this close to max_white


@dataclass
class Result:
    method: str
    stride: int | None
    work: Work | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # this process, all threads
    others: list[float | None] = field(default_factory=list)  # CPU seconds other processes used meanwhile

    @property
    def cores(self) -> float:
        """Cores this process kept busy: median CPU over median wall time."""
        return statistics.median(self.cpu) / self.median

    @property
    def others_cores(self) -> float | None:
        """Cores other processes on the machine kept busy meanwhile (None where /proc/stat is unreadable)."""
        known = [o for o in self.others if o is not None]
        return statistics.median(known) / self.median if known else None

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    def rate(self, amount: float) -> float:
        return amount / self.median

    @property
    def mp_per_s(self) -> float:
        return self.rate(self.work.area) / 1e6

    @property
    def tiles_per_s(self) -> float:
        return self.rate(self.work.tiles)



def find(results: list[Result], method: str, stride: int | None) -> Result | None:
    return next((r for r in results if r.method == method and (stride is None or r.stride == stride)), None)


def _ratio(result: Result, reference: Result | None, best: bool = False) -> float | None:
    """MP/s of ``result`` over the reference's (the recipe at the same stride, or the decode limit), from the
    medians, or from the fastest runs with ``best`` (other load only ever adds time)."""
    if reference is None or result is reference:
        return None
    if best:
        return result.work.area / min(result.wall) / (reference.work.area / min(reference.wall))
    return result.mp_per_s / reference.mp_per_s


def _references(result: Result, results: list[Result]) -> tuple[Result | None, Result | None, Result | None]:
    """The recipe and tile_grid at the result's stride (None for the decode limit), and the decode limit."""
    at = (lambda method: find(results, method, result.stride)) if result.stride is not None else (lambda _: None)
    return at("recipe"), find(results, "decode", None), at("tile_grid")


def result_json(r: Result, results: list[Result]) -> dict[str, Any]:
    recipe, decode, grid = _references(r, results)
    extra = {k: v for k, v in r.work.extra.items() if k != "white_ratio"}
    if r.method == "tile_grid":
        extra["glass"] = 1 - r.work.kept / r.work.tiles  # measured: the share of the grid's tiles not kept
    return {
        "method": r.method, "label": LABELS[r.method], "stride": r.stride,
        "wall_s": r.wall, "cpu_s": r.cpu, "others_cpu_s": r.others, "median_s": r.median, "min_s": min(r.wall),
        "max_s": max(r.wall), "cpu_median_s": statistics.median(r.cpu), "cores_used": r.cores,
        "others_cores": r.others_cores,
        "tiles_scored": r.work.tiles, "tiles_out": r.work.kept, "area_px": r.work.area,
        "tiles_per_s": r.tiles_per_s, "tiles_out_per_s": r.rate(r.work.kept), "mp_per_s": r.mp_per_s,
        "ratio_vs_recipe": _ratio(r, recipe), "ratio_vs_decode": _ratio(r, decode),
        "ratio_vs_tile_grid": _ratio(r, grid),
        "ratio_vs_decode_of_mins": _ratio(r, decode, best=True),
        # Per unit of level area, the decode limit's CPU seconds over this method's: how much of the CPU it
        # spends decoding, whatever else ran on the machine meanwhile.
        "cpu_ratio_vs_decode": None if decode is None or r is decode else
        statistics.median(decode.cpu) / decode.work.area / (statistics.median(r.cpu) / r.work.area), **extra,
    }


def check_targets(results: list[Result], strides: list[int]) -> list[dict[str, Any]]:
    out = []
    for name, method, reference, minimum, at in TARGETS:
        for stride in ([at] if at is not None else strides):
            r = find(results, method, stride)
            ref = find(results, reference, None if reference == "decode" else stride)
            measured = r is not None and ref is not None
            if measured and method == "skip_background":  # a target for mostly-glass slides only
                measured = abs(1 - ref.work.kept / ref.work.tiles - TARGET_GLASS) <= 0.02
            ratio = _ratio(r, ref) if measured else None
            best = _ratio(r, ref, best=True) if measured else None
            out.append({"target": name, "method": method, "reference": reference, "stride": stride,
                        "minimum": minimum, "ratio": ratio, "ratio_of_fastest_runs": best,
                        "passed": None if ratio is None else ratio >= minimum})
    return out


def check_results(results: list[Result], recipe_rows: dict[int, list[int]]) -> dict[str, Any]:
    """The methods did the same work: the recipe's keep decisions on its rows equal tile_grid's, and the
    one-pass and two-pass streams delivered exactly the tiles tile_grid keeps (else ``problems``: exit 1). Each
    peer's keep decisions are compared with the recipe's (tile_grid's on the same rows without the recipe); a
    difference is a ``peer_mismatches`` entry: reported, as the peers' decoders are not histofast's contract."""
    checks: dict[str, Any] = {"problems": [], "peer_mismatches": []}
    for stride, rows in recipe_rows.items():
        recipe, grid = find(results, "recipe", stride), find(results, "tile_grid", stride)
        if recipe is not None and grid is not None:
            differ = _compare(checks, f"recipe_vs_tile_grid_stride{stride}", recipe,
                              grid.work.extra["white_ratio"][rows].astype(np.float64))
            if differ:
                checks["problems"].append(f"stride {stride}: {differ} of {recipe.work.tiles} recipe keep decisions "
                                          f"differ from tile_grid's")
        reference, name = ((recipe.work.extra["white_ratio"], "recipe") if recipe is not None else
                           (grid.work.extra["white_ratio"][rows].astype(np.float64), "tile_grid") if grid is not None
                           else (None, None))
        for peer in (find(results, p, stride) for p in PEERS):
            if peer is None or reference is None:
                continue
            differ = _compare(checks, f"{peer.method}_vs_{name}_stride{stride}", peer, reference)
            if differ:
                checks["peer_mismatches"].append(f"stride {stride}: {differ} of {peer.work.tiles} "
                                                 f"{peer.method} keep decisions differ from the {name}'s")
    for r in results:
        if r.method in ("iter_tiles", "two_pass"):
            grid = find(results, "tile_grid", r.stride)
            if grid is not None and grid.work.kept != r.work.kept:
                checks["problems"].append(f"stride {r.stride}: {r.method} delivered {r.work.kept} tiles, "
                                          f"tile_grid keeps {grid.work.kept}")
        if r.method in ("dicom", "dicom_openslide") and find(results, "tile_grid", r.stride) is not None:
            grid = find(results, "tile_grid", r.stride)  # the same JPEG tiles: the same white ratios
            if not np.array_equal(r.work.extra["white_ratio"], grid.work.extra["white_ratio"]):
                checks["problems"].append(f"stride {r.stride}: {r.method}'s white ratios differ from tile_grid's on "
                                          "the SVS of the same tiles")
        if r.method == "dct" and find(results, "resampled", r.stride) is not None:
            checks[f"dct_vs_resampled_stride{r.stride}"] = dct_agreement(r, find(results, "resampled", r.stride))
        if r.method == "skip_background" and find(results, "tile_grid", r.stride) is not None:
            checks[f"skip_background_stride{r.stride}"] = agreement = skip_agreement(
                r, find(results, "tile_grid", r.stride))
            if agreement["agreement"] < SKIP_AGREEMENT or agreement["max_distance_to_threshold"] > SKIP_NEAR:
                checks["problems"].append(
                    f"stride {r.stride}: skip_background agrees with tile_grid on {agreement['agreement']:.4%} of "
                    f"tiles (at least {SKIP_AGREEMENT:.1%} wanted), differing tiles up to "
                    f"{agreement['max_distance_to_threshold']:.3f} from max_white (at most {SKIP_NEAR} wanted)")
    return checks


def dct_agreement(r: Result, triangle: Result) -> dict[str, Any]:
    """How the DCT-scaled grid's keep decisions and white ratios compare with the triangle filter's, tile by tile
    (reported, not checked: the two views are different pixels by design)."""
    fast, ratio = r.work.extra["white_ratio"], triangle.work.extra["white_ratio"]
    differ = (fast <= MAX_WHITE) != (ratio <= MAX_WHITE)
    return {"tiles": int(ratio.size), "differ": int(differ.sum()),
            "max_ratio_difference": float(np.abs(fast - ratio).max()), "resample": r.work.extra["resample"]}


def skip_agreement(r: Result, exact: Result) -> dict[str, Any]:
    """How ``skip_background``'s keep decisions compare with the exact scan's, tile by tile: the share that agree,
    the tiles that differ, and how far the exact white ratio of those lies from ``max_white``."""
    fast, ratio = r.work.extra["white_ratio"], exact.work.extra["white_ratio"]
    differ = (fast <= MAX_WHITE) != (ratio <= MAX_WHITE)
    return {"tiles": int(ratio.size), "differ": int(differ.sum()), "agreement": 1 - float(differ.mean()),
            "max_distance_to_threshold": float(np.abs(ratio[differ] - MAX_WHITE).max()) if differ.any() else 0.0,
            "skipped": r.work.extra["skipped"], "glass": 1 - exact.work.kept / exact.work.tiles}


def _compare(checks: dict[str, Any], key: str, result: Result, reference: np.ndarray) -> int:
    """Record how ``result``'s white ratios differ from ``reference`` (same rows) under ``key``; keep differences."""
    ratio = result.work.extra["white_ratio"]
    differ = int(((ratio <= MAX_WHITE) != (reference <= MAX_WHITE)).sum())
    checks[key] = {"tiles": int(ratio.size), "keep_differs": differ,
                   "max_abs_white_ratio_diff": float(np.abs(ratio - reference).max())}
    return differ


def print_table(results: list[Result], targets: list[dict], slide: dict, threads: int, machine: dict,
                skipped: list[dict[str, str]] = (), peer_mismatches: list[str] = ()) -> None:
    w, h = slide["level0_dimensions"]
    dirty = " (dirty)" if machine.get("git_dirty") else ""
    print(f"histofast {machine['version']} @ {machine['git_sha'][:10]}{dirty}, "
          f"{machine['cores']} cores ({machine['cpu']}), {threads} decode threads, avx2={machine['avx2']}, "
          f"OpenMP threads={machine['cpu_threads']}, cuda_compiled={machine['cuda_compiled']}, gpu={machine['gpu']}")
    print(f"slide {Path(slide['path']).name}: {w}×{h}, {slide['file_bytes'] / 2**20:.0f} MiB, {slide['compression']} "
          f"{slide['tile_width']}×{slide['tile_height']} tiles, backend {slide['histofast_backend']}")
    print("seconds: median of the timed runs (min–max). MP/s: level-0 area credited per second. Ratios: of MP/s\n"
          "(at one stride the same as of tiles/s). cpu: cores this process kept busy; others: cores other processes\n"
          "on the machine kept busy meanwhile (their load only ever slows a run down).\n")
    header = (f"{'method':<15}{'stride':>7}{'seconds':>9}{'(min–max)':>15}{'tiles/s':>9}{'MP/s':>8}"
              f"{'× (a)':>8}{'× (b)':>7}{'× (c)':>7}{'kept/s':>8}{'cpu':>6}{'others':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        recipe, decode, grid = _references(r, results)
        ra, rb, rc = _ratio(r, recipe), _ratio(r, decode), _ratio(r, grid)
        spread = f"({min(r.wall):.2f}–{max(r.wall):.2f})"
        tiles = "—" if r.method == "decode" else f"{r.tiles_per_s:,.0f}"
        kept = f"{r.rate(r.work.kept):,.0f}" if r.method in ("iter_tiles", "two_pass") else "—"
        others = "?" if r.others_cores is None else f"{r.others_cores:.1f}"
        print(f"{LABELS[r.method]:<15}{r.stride or '—':>7}{r.median:>9.2f}{spread:>15}{tiles:>9}{r.mp_per_s:>8.1f}"
              f"{_fmt_ratio(ra):>8}{_fmt_ratio(rb):>7}{_fmt_ratio(rc):>7}{kept:>8}{r.cores:>6.1f}{others:>8}")
    decode = find(results, "decode", None)
    if decode is not None:
        print(f"\n(b) decodes all {decode.work.tiles} stored tiles of level 0: "
              f"{decode.tiles_per_s:,.0f} stored tiles/s")
    for r in results:
        if r.method == "recipe" or r.method in PEERS:
            print(f"{LABELS[r.method]} at stride {r.stride} scores {r.work.tiles} of the grid's tiles "
                  f"({len(r.work.extra['white_ratio'])} whole rows spread over the level)")
    for message in peer_mismatches:
        print(f"PEER MISMATCH: {message}")
    for s in skipped:
        print(f"skipped {LABELS[s['method']]}: {s['reason']}" + (f" ({s['install']})" if "install" in s else ""))
    for r in results:
        if r.method in ("iter_tiles", "two_pass"):
            print(f"{LABELS[r.method]} at stride {r.stride} delivers {r.work.kept} kept tiles in "
                  f"{r.work.extra['batches']} batches")
        if r.method == "dct" and find(results, "resampled", r.stride) is not None:
            a, triangle, grid = dct_agreement(r, find(results, "resampled", r.stride)), \
                find(results, "resampled", r.stride), find(results, "tile_grid", r.stride)
            print(f"{LABELS[r.method]} at stride {r.stride}: {_ratio(r, triangle):.2f}× {LABELS['resampled']}"
                  + ("" if grid is None else f", {_ratio(r, grid):.2f}× tile_grid")
                  + f"; {a['differ']} of {a['tiles']} keep decisions differ from the triangle filter's, white ratios "
                  f"by at most {a['max_ratio_difference']:.4f}")
        if r.method == "skip_background" and find(results, "tile_grid", r.stride) is not None:
            a = skip_agreement(r, find(results, "tile_grid", r.stride))
            print(f"{LABELS[r.method]} at stride {r.stride}: {_ratio(r, find(results, 'tile_grid', r.stride)):.2f}× "
                  f"tile_grid on a slide {a['glass']:.0%} glass (tiles not kept), {a['skipped']:.0%} of the tiles "
                  f"left undecoded; agrees on {a['agreement']:.4%} of {a['tiles']} keep decisions ({a['differ']} "
                  f"differ, at most {a['max_distance_to_threshold']:.3f} from max_white)")
    print("\ntargets (ratio of medians; of the fastest runs in brackets):")
    for t in targets:
        verdict = "not measured" if t["passed"] is None else ("PASS" if t["passed"] else "FAIL")
        ratio = "" if t["ratio"] is None else f"{t['ratio']:.2f}× ({t['ratio_of_fastest_runs']:.2f}×)"
        print(f"  {verdict:<13}{t['target']:<40} stride {t['stride']:<5}{ratio}")


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def method_name(r: Result) -> str:
    return LABELS[r.method] + (f" stride {r.stride}" if r.stride is not None else "")

