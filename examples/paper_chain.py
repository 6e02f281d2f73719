"""The paper's chain on generated data, in one command: slides of two classes → ``histofast tile --format
tfrecord`` → Inception v3 with its early layers frozen against the plain CNN (``simple_cnn``), trained on the
same shards → both scored on the slides of patients that training never saw → a comparison table.

    python examples/paper_chain.py                                # about 4 minutes on a 2-core CPU
    python examples/paper_chain.py --weights inception_v3.pth     # Inception v3 from weights you already have
    python examples/paper_chain.py --quick                        # a smoke run of well under a minute

What it runs:

1. ``histofast.synth.write_region_dataset``: H&E-like slides of two classes, ADC (adenocarcinoma analogue:
   glands, a white lumen ringed by nuclei) and SC (squamous analogue: nests of large nuclei in pale
   cytoplasm), 1024² PNG images, ``--patients`` (10) patients per class with their own stain shift,
   ``--slides-per-patient`` (2) each. Nothing is downloaded, ever.
2. ``histofast.split(by="patient")`` deals whole patients to train / validation / test (6 / 2 / 2 per class)
   *before* tiling, so no slide of a test patient is ever tiled into the training shards.
3. ``histofast tile SLIDES --format tfrecord --label K``: one call per split and class (label 0 = ADC, 1 = SC).
4. ``histofast train``: ``simple_cnn`` at the tile size, and ``inception_v3 --freeze-until Mixed_7a
   --input-size N`` (layers before Mixed_7a fixed, as the paper did; ``--pretrained PATH`` when you pass
   ``--weights PATH``, a torchvision-layout state dict such as torchvision's ``inception_v3`` ImageNet
   weights saved with ``torch.save(model.state_dict(), PATH)``; without it Inception v3 starts from random
   initialisation, so its frozen layers are random features).
5. ``histofast evaluate best.pt TEST_SHARDS`` for both (``best.pt``: the epoch of best validation accuracy),
   then one table: tile accuracy and AUC, slide accuracy (mean of a slide's tile probabilities) on the test
   patients, training and evaluation time.

Sizes are reduced for a CPU: 128-pixel tiles (the README's model comparison used 128-pixel patches) and four
epochs. Inception v3 was built for 299-pixel input (the paper resized its tiles to 299) and is slow on a CPU,
so here it reads the 128-pixel tiles as they are; ``--input-size N`` resizes them (N ≥ 75).
Every command is printed as you would type it, relative to the output folder.
Outputs go to a temporary folder that is removed at the end, or to ``--out DIR`` (kept). Reading TFRecord
shards needs NVIDIA DALI (``pip install -e ".[dali]"``; its CPU pipelines run without a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import histofast
from histofast import synth
from histofast.cli import main as histofast_cli

CLASSES = ("ADC", "SC")  # index = the TFRecord label


def run(*argv: str) -> None:
    """``histofast ARGV`` in this process, printed first as a shell command; stop on failure."""
    print(f"\n$ histofast {shlex.join(argv)}", flush=True)
    status = histofast_cli(list(argv))
    if status:
        sys.exit(f"histofast {argv[0]} failed (exit status {status})")


@contextmanager
def work_folder(out: str | None) -> Iterator[Path]:
    """``out`` (created; kept), or a temporary folder removed on exit; the current directory meanwhile."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="histofast-paper-chain-") as tmp:
        root = Path(out).resolve() if out else Path(tmp)
        if out and root.exists() and any(root.iterdir()):
            sys.exit(f"--out {out}: not empty; give a new or empty folder")
        root.mkdir(parents=True, exist_ok=True)
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(old)


def make_slides(a: argparse.Namespace) -> dict[str, list]:
    """Generate the slides, split their patients, and move each split's slides to ``slides/<split>/<class>/``."""
    tic = time.perf_counter()
    synth.write_region_dataset("regions", classes=CLASSES, n_per_class=a.patients * a.slides_per_patient,
                               size=a.slide_size, seed=a.seed, patients_per_class=a.patients, fmt="png")
    held_out = max(1, round(a.patients / 5)) / a.patients  # of each class's patients, for validation and for test
    splits = dict(zip(("train", "val", "test"),
                      histofast.split("regions/manifest.csv", by="patient", seed=a.seed,
                                      fractions=(1 - 2 * held_out, held_out, held_out))))
    for name, slides in splits.items():
        for s in slides:
            dest = Path("slides", name, s.label, Path(s.path).name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(s.path, dest)
        patients = sorted({s.patient for s in slides})
        print(f"{name}: {len(slides)} slides of {len(patients)} patients ({', '.join(patients)})")
    print(f"generated {2 * a.patients * a.slides_per_patient} slides of {a.slide_size}² in "
          f"{time.perf_counter() - tic:.1f} s")
    return splits


def device_name(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"


def param_counts(model: str, frozen_until: str | None) -> tuple[int, int]:
    """(trainable, total) parameters of ``model`` for two classes, as trained here."""
    from histofast.models import build_model, freeze

    options = {"aux_logits": False} if model == "inception_v3" else {}
    net = build_model(model, len(CLASSES), **options)
    if frozen_until:
        freeze(net, frozen_until)
    return sum(p.numel() for p in net.parameters() if p.requires_grad), sum(p.numel() for p in net.parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults take about 4 minutes on a 2-core CPU; nothing is downloaded.")
    p.add_argument("--out", metavar="DIR", help="keep slides, shards and runs here (default: a temporary folder, "
                   "removed at the end)")
    p.add_argument("--weights", metavar="PATH", help="Inception v3 weights you already have, a local state dict "
                   "in torchvision's key layout (default: random initialisation)")
    p.add_argument("--patients", type=int, default=10, help="patients per class, at least 3; a fifth of them "
                   "(at least one) for validation and as many for the test (default 10: 6 train, 2, 2)")
    p.add_argument("--slides-per-patient", type=int, default=2, help="default 2")
    p.add_argument("--slide-size", type=int, default=1024, help="slide side, pixels (default 1024)")
    p.add_argument("--tile-size", type=int, default=128, help="tile side, pixels (default 128)")
    p.add_argument("--input-size", type=int, default=128, help="Inception v3 input side: tiles are resized to it "
                   "(default 128, the tile size; at least 75; the paper used 299)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs of each model (default 4)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: a GPU when there is one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny: 3 patients per class, one 256² slide each, "
                   "one epoch, Inception v3 at 80 px")
    a = p.parse_args(argv)
    if a.quick:
        a.patients, a.slides_per_patient, a.slide_size, a.input_size, a.epochs, a.batch_size = 3, 1, 256, 80, 1, 8
    if a.patients < 3:
        p.error("--patients: at least 3 per class (train, validation and test each need one)")
    if a.input_size < 75:
        p.error("--input-size: Inception v3 needs at least 75 pixels")
    weights = os.path.abspath(a.weights) if a.weights else None
    if weights and not os.path.isfile(weights):
        p.error(f"--weights {a.weights}: no such file")

    start = time.perf_counter()
    with work_folder(a.out) as root:
        print(f"working in {root}{'' if a.out else ' (temporary)'}")
        make_slides(a)

        for split in ("train", "val", "test"):
            for label, name in enumerate(CLASSES):
                run("tile", f"slides/{split}/{name}", "--out", f"tiles/{split}/{name}", "--tile-size",
                    str(a.tile_size), "--format", "tfrecord", "--label", str(label), "--quiet")

        models = {
            "simple_cnn": [],
            "inception_v3": ["--freeze-until", "Mixed_7a", "--input-size", str(a.input_size)]
            + (["--pretrained", weights] if weights else []),
        }
        if not weights:
            print("\nno --weights given: Inception v3 trains from random initialisation (its frozen layers are "
                  "random features)")
        rows = []
        for model, extra in models.items():
            tic = time.perf_counter()
            run("train", "tiles/train", "--val-data", "tiles/val", "--classes", *CLASSES, "--model", model,
                "--tile-size", str(a.tile_size), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
                "--seed", str(a.seed), "--device", a.device, "--out", f"runs/{model}", "--quiet", *extra)
            train_s = time.perf_counter() - tic
            tic = time.perf_counter()
            run("evaluate", f"runs/{model}/best.pt", "tiles/test", "--out", f"runs/{model}/test", "--device", a.device,
                "--quiet")
            eval_s = time.perf_counter() - tic
            metrics = json.loads(Path(f"runs/{model}/test/metrics.json").read_text())
            tiles, slides = metrics["patch"], metrics.get("slide")
            slide_acc = f"{slides['accuracy']:.3f} ({slides['count']})" if slides else "n/a"
            trainable, total = param_counts(model, "Mixed_7a" if model == "inception_v3" else None)
            init = "random" if model == "simple_cnn" or not weights else "--weights"
            size = a.input_size if model == "inception_v3" else a.tile_size
            rows.append((model, init, f"{trainable / 1e6:.2f} M / {total / 1e6:.2f} M", size, a.epochs,
                         tiles["count"], tiles["accuracy"], tiles["macro_auc"], slide_acc, train_s, eval_s))

    print(f"\nResult: {len(CLASSES)} classes ({', '.join(CLASSES)}), test patients never seen in training, "
          f"{rows[0][5]} tiles of {a.tile_size}²; one run on {device_name(a.device)}, "
          f"{time.perf_counter() - start:.0f} s in all")
    print("| model | init | trainable / all params | input px | epochs | test tiles | tile acc | tile AUC | "
          "slide acc (slides) | train time | eval time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, init, params, size, epochs, count, acc, auc, slide_acc, train_s, eval_s in rows:
        print(f"| {model} | {init} | {params} | {size} | {epochs} | {count} | {acc:.3f} | {auc:.3f} | {slide_acc} | "
              f"{train_s:.0f} s | {eval_s:.0f} s |")
    print(f"kept in {root}" if a.out else "temporary folder removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
