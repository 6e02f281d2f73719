"""Does it learn? The paper's comparison (SimpleCNN vs GoogLeNet vs Inception v3 vs the two-level CNN) on a
generated 4-class dataset (``histofast.synth.write_region_dataset``: NORM, SCLC, SC, ADC textures, one stain
shift per patient), with one patient-disjoint train/validation split shared by every model.

Every model sees the same images (``--image-size`` regions cut into a grid of ``--tile-size`` patches): the
two-level CNN classifies the image from its patch maps; the baselines classify each patch with the image's
label, and an image's prediction is the mean of its patches' probabilities. The target: the two-level CNN
at reduced size reaches ≥ 95 % per-image validation accuracy within 10 minutes of training on a 2-core CPU.

    python benchmarks/train_synthetic.py                    # all four models, ~30 min on 2 cores
    python benchmarks/train_synthetic.py --models two_level_cnn
    python benchmarks/train_synthetic.py --quick            # tiny data, one epoch each: a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from histofast import split, synth
from histofast.data.sources import write_manifest
from histofast.models import MODELS
from histofast.train import fit, model_from_checkpoint, read_checkpoint
from histofast.train.config import TrainConfig
from histofast.utils.machine import machine_info

TARGET = 0.95
BUDGET_S = 600.0

# Reduced sizes for a 2-core CPU: 128-pixel patches (the textures' glands repeat every ~84 px), 640 images
# (5 × 5 patches, as the seed's image network), narrow widths; batches of 4 images (100 patches) so that the
# image stage, whose epochs are cheap, gets enough steps; the baselines run fewer, costlier epochs.
RUNS: dict[str, dict[str, Any]] = {
    "two_level_cnn": dict(patch_widths=[8, 16, 32, 64], image_widths=[16, 32], patch_epochs=3, epochs=22),
    "simple_cnn": dict(epochs=3),
    "googlenet": dict(epochs=2),
    "inception_v3": dict(epochs=2),
}


def _time_to_target(history: list[dict[str, Any]]) -> tuple[int | None, float | None]:
    """(epoch, cumulative training seconds) at which validation image accuracy first reached TARGET."""
    elapsed = 0.0
    for r in history:
        elapsed += r["seconds"]
        if (r.get("val") or {}).get("image_acc", 0) >= TARGET and r["stage"] != "patch":
            return r["epoch"] + 1, elapsed
    return None, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(RUNS), choices=list(MODELS),
                   help="models to train (default all)")
    p.add_argument("--n-per-class", type=int, default=40, help="regions per class (default 40)")
    p.add_argument("--patients", type=int, default=10, help="patients per class (default 10)")
    p.add_argument("--image-size", type=int, default=640, help="region and image side, pixels (default 640)")
    p.add_argument("--tile-size", type=int, default=128, help="patch side, pixels (default 128)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="patients held out per class (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lanes", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="8 regions per class, one epoch per stage")
    p.add_argument("--out", type=Path, default=Path(".benchmarks") / "train_synthetic", help="data and runs")
    p.add_argument("--json", type=Path, default=Path(".benchmarks") / "train_synthetic.json")
    a = p.parse_args(argv)
    if a.quick:
        a.n_per_class, a.patients = 8, 4

    data = a.out / f"regions-{a.n_per_class}x{a.image_size}-p{a.patients}-s{a.seed}"
    tic = time.perf_counter()
    if not (data / "manifest.csv").exists():
        synth.write_region_dataset(data, n_per_class=a.n_per_class, size=a.image_size, seed=a.seed,
                                   patients_per_class=a.patients)
    generate_s = time.perf_counter() - tic
    train, val = split(data / "manifest.csv", by="patient", fractions=(1 - a.val_fraction, a.val_fraction), seed=a.seed)
    write_manifest(train, data / "train.csv")
    write_manifest(val, data / "val.csv")
    print(f"data: {len(train)} training and {len(val)} validation regions of {a.image_size}², patient-disjoint "
          f"({generate_s:.0f} s to generate)", flush=True)

    results = {}
    for name in a.models:
        run = dict(RUNS[name])
        if a.quick:
            run.update({k: 1 for k in ("epochs", "patch_epochs") if k in run})
        config = TrainConfig(data=os.fspath(data / "train.csv"), val_data=os.fspath(data / "val.csv"),
                             out=os.fspath(a.out / name), model=name, tile_size=a.tile_size, stride=a.tile_size,
                             image_size=a.image_size, batch_size=4, seed=a.seed, lanes=a.lanes,
                             backend="torch", device="cpu", log_interval=10_000, **run)
        shutil.rmtree(config.out, ignore_errors=True)  # a fresh run each time
        print(f"training {name} ...", flush=True)
        tic = time.perf_counter()
        result = fit(config, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - tic
        best = read_checkpoint(result.best_checkpoint or result.checkpoint)
        val_best = best["history"][-1]["val"]
        epoch, to_target = _time_to_target(result.history)
        params = sum(p.numel() for p in model_from_checkpoint(best, name).parameters())
        results[name] = {
            "params": params, "epochs": len(result.history), "train_s": seconds,
            "epoch_s": [r["seconds"] for r in result.history], "best_epoch": best["epoch"],
            "val_image_acc": val_best["image_acc"], "val_patch_acc": val_best["patch_acc"],
            "val_slide_acc": val_best["slide_acc"], "val_image_macro_auc": val_best["image"]["macro_auc"],
            "target_epoch": epoch, "target_s": to_target, "history": result.history,
        }
        print(f"  {name}: val image acc {val_best['image_acc']:.3f} (patch {val_best['patch_acc']:.3f}) at epoch "
              f"{best['epoch']}, {seconds:.0f} s", flush=True)

    print("\n| model | params | epochs | train time | val image acc | val patch acc | image macro AUC | "
          f"≥ {TARGET:.0%} image acc after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        reached = f"{r['target_s']:.0f} s (epoch {r['target_epoch']})" if r["target_s"] is not None else "not reached"
        print(f"| {name} | {r['params'] / 1e6:.2f} M | {r['epochs']} | {r['train_s'] / 60:.1f} min | "
              f"{r['val_image_acc']:.3f} | {r['val_patch_acc']:.3f} | {r['val_image_macro_auc']:.3f} | {reached} |")
    two = results.get("two_level_cnn")
    if two is not None:
        met = two["target_s"] is not None and two["target_s"] <= BUDGET_S
        print(f"\ntarget (two_level_cnn ≥ {TARGET:.0%} val image accuracy within {BUDGET_S / 60:.0f} min of training): "
              f"{'met' if met else 'NOT met'}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"machine": machine_info(), "args": {k: os.fspath(v) if isinstance(v, Path) else v
                                                                      for k, v in vars(a).items()},
                                  "generate_s": generate_s, "results": results}, indent=1))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
