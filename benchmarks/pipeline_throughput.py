"""Batches and tiles per second of ``histofast.Pipeline`` (torch and DALI backends) against the plain
PyTorch recipe: a map-style ``Dataset`` that reads each tile with OpenSlide, converts it with PIL and
normalises it with torch, in a ``DataLoader`` with the same workers, batch size and tiles; one process.

    python benchmarks/pipeline_throughput.py            # 4 generated 6144² slides, ~2 min on 2 cores
    python benchmarks/pipeline_throughput.py --quick    # 2 slides of 3072², seconds
    python benchmarks/pipeline_throughput.py --device cuda   # GPU: batches made and augmented on the device
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import histofast as hf
from histofast.utils.machine import machine_info


class OpenSlideTiles(torch.utils.data.Dataset):
    """The recipe without histofast: OpenSlide read_region → PIL RGB → torch float, normalised, rot90/flip."""

    def __init__(self, tiles: list[tuple[str, int, int, int]], tile_size: int, mean, std, seed: int = 0) -> None:
        self.tiles, self.tile_size, self.seed = tiles, tile_size, seed
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self._open: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int):
        import openslide

        path, x, y, label = self.tiles[i]
        if path not in self._open:
            self._open[path] = openslide.OpenSlide(path)
        image = self._open[path].read_region((x, y), 0, (self.tile_size, self.tile_size)).convert("RGB")
        t = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        t = torch.rot90(t, int(torch.randint(4, (1,), generator=g)), (1, 2))
        if torch.rand(1, generator=g) < 0.5:
            t = t.flip(2)
        return {"image": (t - self.mean) / self.std, "label": label}


def timed(make_iter, consume, repeats: int) -> tuple[float, int, int, list[float]]:
    """Median seconds of ``repeats`` epochs (a new iterator each), with the tiles and batches of the last."""
    times = []
    for _ in range(repeats):
        tiles = batches = 0
        start = time.perf_counter()
        for batch in make_iter():
            consume(batch)
            tiles += len(batch["label"])
            batches += 1
        times.append(time.perf_counter() - start)
    return statistics.median(times), tiles, batches, times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 slides of 3072², 1 repeat")
    p.add_argument("--slides", type=int, default=4, help="generated slides (default 4)")
    p.add_argument("--size", type=int, default=6144, help="generated slide side, pixels (default 6144)")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lanes", type=int, default=os.cpu_count() or 1, help="Pipeline lanes = DataLoader workers")
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per pipeline (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "uint8"),
                   help="histofast's batch dtype (uint8: not normalised); the recipe's stays float32")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "histofast" / "bench")
    p.add_argument("--json", type=Path, default=Path(".benchmarks") / "pipeline_throughput.json")
    a = p.parse_args(argv)
    if a.quick:
        a.slides, a.size, a.repeats = 2, 3072, 1
    a.cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(a.slides):
        path = a.cache / f"pipeline-{a.size}-{k}.svs"
        if not path.exists():
            hf.synth.write_slide(path, a.size, a.size, seed=100 + k, tissue_fraction=0.5)
        paths.append(os.fspath(path))
    labels = [f"C{k % 2}" for k in range(len(paths))]
    mean, std = (0.7, 0.6, 0.75), (0.15, 0.15, 0.15)
    norm = dict(mean=mean, std=std) if a.dtype != "uint8" else {}
    batch = hf.BatchFormat(a.batch_size, hf.Augment(rot90=True, flip=True), a.dtype, **norm)
    common = dict(grid=hf.GridSpec(a.tile_size, a.stride), batch=batch, lanes=a.lanes, progress=False)
    rows = {}

    def consume(batch):  # a no-op model that still touches the batch's memory once
        float(batch["image"].view(-1)[:: 4096].float().sum())

    for backend in ("torch", "dali"):
        try:
            pipe = hf.Pipeline(paths, labels=labels, backend=backend, device=a.device, **common)
        except hf.HistofastError as e:
            print(f"{backend}: skipped ({e})")
            continue
        rows[f"Pipeline backend={backend}"] = timed(lambda pipe=pipe: iter(pipe), consume, a.repeats)
    ds = hf.TileDataset(paths, labels=labels, **common)
    tiles = [(ds.slides[i], int(x), int(y), int(ds.samples.labels[i]))
             for i, g in enumerate(ds.samples.grids) for x, y in g.coords]
    rows[f"DataLoader(TileDataset, num_workers={a.lanes})"] = timed(
        lambda: iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=a.lanes)), consume, a.repeats)
    baseline = OpenSlideTiles(tiles, a.tile_size, mean, std)
    rows[f"recipe: OpenSlide+PIL+torch Dataset, num_workers={a.lanes}"] = timed(
        lambda: iter(torch.utils.data.DataLoader(baseline, batch_size=a.batch_size, shuffle=True,
                                                 num_workers=a.lanes)), consume, 1 if a.quick else 2)
    base_s = list(rows.values())[-1][0]
    report = {"machine": machine_info(), "args": {k: os.fspath(v) if isinstance(v, Path) else v
                                                   for k, v in vars(a).items()},
              "tiles": len(tiles), "results": []}
    print(f"{len(paths)} slides {a.size}², tile {a.tile_size} stride {a.stride}, {len(tiles)} kept tiles, "
          f"batch {a.batch_size}, {a.dtype} NCHW{' normalised' if norm else ''} (recipe: float32), rot90+flip, "
          f"{a.lanes} workers, device {a.device}")
    print(f"{'method':58s} {'s/epoch':>8s} {'batches/s':>10s} {'tiles/s':>9s} {'x recipe':>9s}")
    for name, (seconds, n, batches, times) in rows.items():
        print(f"{name:58s} {seconds:8.2f} {batches / seconds:10.2f} {n / seconds:9.0f} {base_s / seconds:9.1f}")
        report["results"].append({"method": name, "seconds": seconds, "all_seconds": times, "tiles": n,
                                  "batches": batches, "tiles_per_s": n / seconds, "x_recipe": base_s / seconds})
    names = list(rows)
    if names[0].endswith("torch") and len(names) > 1 and names[1].endswith("dali"):
        ratio = rows[names[1]][0] / rows[names[0]][0]
        report["dali_s_over_torch_s"] = ratio
        print(f"DALI / torch backend time: {ratio:.2f}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
