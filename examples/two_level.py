"""The two-level CNN through histofast's Python API, in one command: generated H&E-like regions of four
classes → ``histofast.Pipeline(image_size=…)`` (every image window cut into its grid of patches) →
``TwoLevelCNN`` trained stage by stage → per-image accuracy on patients that training never saw.

    python examples/two_level.py              # about 2.5 minutes on a 2-core CPU
    python examples/two_level.py --quick      # a smoke run of well under a minute

What it runs:

1. ``histofast.synth.write_region_dataset``: 512² regions of NORM (normal), SCLC (small-cell), SC (squamous)
   and ADC (adenocarcinoma) analogues, ``--patients`` (8) patients per class with their own stain shift,
   ``--regions-per-patient`` (6) each, and a manifest ``path,label,patient``. Nothing is downloaded, ever.
2. ``histofast.split(by="patient")``: a quarter of each class's patients (2 of 8) are held out for the test.
3. ``histofast.Pipeline(source, grid=GridSpec(tile_size), batch=BatchFormat(…), image_size=...)``: one sample
   per ``--image-size`` window of a region, as its patch grid ``[B, P, 3, t, t]``; augmented (rot90, flip,
   shift) for training, plain for the test.
4. ``histofast.models.two_level_cnn``: the patch stage (3 epochs) trains the patch net on every patch with its
   image's label (``model.patch_logits``); the image stage (12 epochs) freezes it and trains the image net on
   the stacked patch maps (``model.patch_maps`` → ``model.image_net``). The seed's Adam, lr 1e-3.
5. The test: per-image accuracy and macro AUC of the image net, a per-class table, and for contrast the
   accuracy of the patch head on every patch.

Sizes are reduced for a CPU (as ``benchmarks/train_synthetic.py``): 128-pixel patches, 512-pixel images
(4 × 4 patches), narrow widths. ``histofast train --model two_level_cnn`` runs the same two stages with
checkpoints, resume and plots. Outputs go to a temporary folder that is removed at the end, or to
``--out DIR`` (kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import histofast
from histofast import synth
from histofast.models import two_level_cnn
from histofast.ops import IMAGENET_MEAN, IMAGENET_STD
from histofast.train.metrics import classification_report


def train_epoch(model: torch.nn.Module, pipe, stage: str, optimizer: torch.optim.Optimizer,
                device: str) -> tuple[float, float]:
    """One epoch of ``stage`` ("patch" or "image"); (mean loss, accuracy of what that stage trains)."""
    model.train()
    if stage == "image":
        model.patch_net.eval()  # frozen: its BatchNorm keeps its statistics
    total = correct = count = 0.0
    for batch in pipe:
        images, labels = batch["image"].to(device), batch["label"].to(device)  # [B, P, 3, t, t], [B]
        if stage == "patch":  # every patch with its image's label
            logits = model.patch_logits(images).flatten(0, 1)  # [B·P, C]
            labels = labels.repeat_interleave(model.num_patches)
        else:  # the image net on the frozen patch maps
            with torch.no_grad():
                maps = model.patch_maps(images)  # [B, P, m, m]
            logits = model.image_net(maps)  # [B, C]
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
    return total / count, correct / count


@torch.no_grad()
def predict(model: torch.nn.Module, pipe, device: str) -> dict[str, np.ndarray]:
    """Image and patch probabilities and the label of every test image."""
    model.eval()
    out: dict[str, list] = {"image": [], "patch": [], "label": []}
    for batch in pipe:
        maps = model.patch_maps(batch["image"].to(device))
        out["image"].append(model.image_net(maps).softmax(1).cpu())
        out["patch"].append(model.patch_net.head(maps).softmax(-1).cpu())  # [B, P, C]
        out["label"].append(batch["label"])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults take about 2.5 minutes on a 2-core CPU; nothing is downloaded.")
    p.add_argument("--out", metavar="DIR", help="keep the generated regions and the trained model (two_level_cnn.pt) "
                   "here (default: a temporary folder, removed at the end)")
    p.add_argument("--patients", type=int, default=8, help="patients per class (default 8: 6 train, 2 test)")
    p.add_argument("--regions-per-patient", type=int, default=6, help="default 6")
    p.add_argument("--region-size", type=int, default=512, help="region side, pixels (default 512: one image; "
                   "a larger region gives one image per --image-size window)")
    p.add_argument("--image-size", type=int, default=512, help="image side, pixels (default 512)")
    p.add_argument("--tile-size", type=int, default=128, help="patch side and patch stride, pixels (default 128)")
    p.add_argument("--patch-epochs", type=int, default=3, help="patch-stage epochs (default 3)")
    p.add_argument("--epochs", type=int, default=12, help="image-stage epochs (default 12)")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    p.add_argument("--backend", default="auto", choices=("auto", "dali", "torch"),
                   help="Pipeline backend (default auto: DALI when installed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny: 4 patients per class, one region each, "
                   "one epoch per stage")
    a = p.parse_args(argv)
    if a.quick:
        a.patients, a.regions_per_patient, a.patch_epochs, a.epochs = 4, 1, 1, 1
    if a.patients < 2:
        p.error("--patients: at least 2 per class (training and test each need one)")

    start = time.perf_counter()
    torch.manual_seed(a.seed)
    with tempfile.TemporaryDirectory(prefix="histofast-two-level-") as tmp:
        root = Path(a.out).resolve() if a.out else Path(tmp)
        if a.out and root.exists() and any(root.iterdir()):
            sys.exit(f"--out {a.out}: not empty; give a new or empty folder")
        print(f"working in {root}{'' if a.out else ' (temporary)'}")

        # 1. Generated regions of four classes, with a manifest path,label,patient.
        tic = time.perf_counter()
        data = synth.write_region_dataset(root / "regions", n_per_class=a.patients * a.regions_per_patient,
                                          size=a.region_size, seed=a.seed, patients_per_class=a.patients)
        print(f"generated {4 * a.patients * a.regions_per_patient} regions of {a.region_size}² in "
              f"{time.perf_counter() - tic:.1f} s")

        # 2. Whole patients to training or test.
        held_out = max(1, round(a.patients / 4)) / a.patients
        train_src, test_src = histofast.split(data / "manifest.csv", by="patient", fractions=(1 - held_out, held_out),
                                              seed=a.seed)
        assert not {s.patient for s in train_src} & {s.patient for s in test_src}

        # 3. Pipelines of images cut into patch grids.
        images = dict(grid=histofast.GridSpec(a.tile_size), image_size=a.image_size, backend=a.backend,
                      device=a.device, seed=a.seed, progress=False)
        batch = histofast.BatchFormat(a.batch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        augment = histofast.Augment(rot90=True, flip=True, max_shift=16, seed=a.seed)
        train = histofast.Pipeline(train_src, batch=dataclasses.replace(batch, augment=augment), shuffle=True, **images)
        test = histofast.Pipeline(test_src, batch=batch, shuffle=False, classes=train.classes, **images)
        print(f"train: {train}\ntest:  {test}")

        # 4. The two-level CNN, stage by stage.
        model = two_level_cnn(num_classes=len(train.classes), tile_size=a.tile_size, image_size=a.image_size,
                              patch_stride=a.tile_size, patch_widths=(8, 16, 32, 64), image_widths=(16, 32))
        model.to(a.device)
        params = sum(p.numel() for p in model.parameters())
        print(f"TwoLevelCNN: {model.num_patches} patches of {a.tile_size}² per image, {params / 1e6:.2f} M parameters")
        schedule = [("patch", model.patch_net, a.patch_epochs), ("image", model.image_net, a.epochs)]
        epoch = 0
        train_s = 0.0
        for stage, part, epochs in schedule:
            if stage == "image":
                model.patch_net.requires_grad_(False)
            optimizer = torch.optim.Adam(part.parameters(), lr=1e-3)
            for _ in range(epochs):
                train.set_epoch(epoch)  # a new shuffle and augmentation draw, reproducible
                tic = time.perf_counter()
                loss, acc = train_epoch(model, train, stage, optimizer, a.device)
                train_s += time.perf_counter() - tic
                print(f"epoch {epoch + 1:2d} ({stage} stage): loss {loss:.4f}, training {stage} accuracy {acc:.3f}, "
                      f"{time.perf_counter() - tic:.1f} s", flush=True)
                epoch += 1

        # 5. The test patients.
        tic = time.perf_counter()
        result = predict(model, test, a.device)
        eval_s = time.perf_counter() - tic
        classes = train.classes
        report = classification_report(result["image"], result["label"], classes)
        patches = result["patch"].reshape(-1, len(classes))
        patch_acc = float((patches.argmax(1) == np.repeat(result["label"], model.num_patches)).mean())
        print(f"\nper image, test patients ({', '.join(sorted({s.patient for s in test_src}))}):\n{report.table()}")
        torch.save({"classes": classes, "state_dict": model.state_dict()}, root / "two_level_cnn.pt")
    total_s = time.perf_counter() - start
    print(f"\nResult: {len(classes)} classes, {len(train_src)} training / {len(test_src)} test regions of "
          f"{a.region_size}² (patient-disjoint), images of {a.image_size}² as {model.num_patches} patches of "
          f"{a.tile_size}²; one run on {a.device} ({os.cpu_count()} cores), {total_s:.0f} s in all")
    print("| model | params | epochs (patch + image) | train time | test images | image acc | image macro AUC | "
          "patch-head acc (patches) | eval time |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| TwoLevelCNN | {params / 1e6:.2f} M | {a.patch_epochs} + {a.epochs} | {train_s:.0f} s | {report.count} | "
          f"{report.accuracy:.3f} | {report.macro_auc:.3f} | {patch_acc:.3f} ({len(patches)}) | {eval_s:.0f} s |")
    print(f"kept in {root}" if a.out else "temporary folder removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
