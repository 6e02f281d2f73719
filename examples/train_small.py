"""Train a small CNN for a few steps on generated slides, with histofast.Pipeline (DALI or torch
backend) or a plain DataLoader over histofast.TileDataset. Runs on a CPU in about a minute.

    python examples/train_small.py                    # Pipeline, backend "auto" (DALI when installed)
    python examples/train_small.py --backend torch
    python examples/train_small.py --dataloader       # DataLoader(TileDataset(...), batch_size=None)
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import histofast as hf


def small_cnn(classes: int) -> nn.Module:
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, classes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="auto", choices=["auto", "dali", "torch"])
    p.add_argument("--dataloader", action="store_true", help="a plain DataLoader over TileDataset instead")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cuda" if hf.cuda_available() else "cpu")
    a = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="histofast-example-") as tmp:  # removed at the end, even on errors
        root = Path(tmp)
        slides = [hf.synth.write_slide(root / f"slide{k}.svs", 2048, 2048, seed=k) for k in range(4)]
        labels = ["tumour", "normal", "tumour", "normal"]  # or a manifest CSV / class folders as the source
        options = dict(grid=hf.GridSpec(tile_size=128), batch=hf.BatchFormat(32, augment=hf.Augment(max_shift=8)),
                       labels=labels)

        if a.dataloader:
            data = torch.utils.data.DataLoader(hf.TileDataset(slides, **options), batch_size=None, num_workers=2)
            classes = data.dataset.classes
        else:
            data = hf.Pipeline(slides, backend=a.backend, device=a.device, **options)
            classes = data.classes
        print(data)

        model = small_cnn(len(classes)).to(a.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for epoch in range(a.epochs):
            (data.dataset if a.dataloader else data).set_epoch(epoch)
            for step, batch in enumerate(data):
                images, target = batch["image"].to(a.device), batch["label"].to(a.device)
                loss = nn.functional.cross_entropy(model(images), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step % 10 == 0:
                    print(f"epoch {epoch} step {step:3d}  loss {loss.item():.3f}  batch {tuple(images.shape)}")


if __name__ == "__main__":
    main()
