"""Images per second of a model's training step (forward + backward + Adam step) on random input, as the
two-level seed trains: TwoLevelCNN at full size is 2560² images cut into 81 patches of 512 (stride 256).

    python benchmarks/model_throughput.py --device cuda                     # full size, bf16 autocast
    python benchmarks/model_throughput.py --device cuda --amp off           # float32
    python benchmarks/model_throughput.py --device cpu --image-size 640 --tile-size 128 --stride 128 \\
        --patch-widths 8 16 32 64 --image-widths 16 32 --batch-size 4      # the CPU benchmark's reduced size

Timed with the device synchronised at both ends of each repeat, after warm-up steps; median and spread of
``--repeats`` runs of ``--steps`` steps. JSON with the machine record in ``.benchmarks/model_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from histofast.models import MODELS, build_model
from histofast.train.loop import amp_dtype, forward, prepare_model, resolve_device
from histofast.utils.machine import machine_info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="two_level_cnn", choices=list(MODELS))
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    p.add_argument("--image-size", type=int, default=2560)
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--patch-widths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--image-widths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch-size", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--stage", default="finetune", choices=("patch", "image", "finetune", "train"),
                   help="two_level_cnn: which loss and gradients (default finetune: end to end)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=Path(".benchmarks") / "model_throughput.json")
    a = p.parse_args(argv)

    device = resolve_device(a.device)
    dtype = amp_dtype(a.amp, device)
    options = {}
    if a.model == "two_level_cnn":
        options = dict(tile_size=a.tile_size, image_size=a.image_size, patch_stride=a.stride,
                       patch_widths=a.patch_widths, image_widths=a.image_widths)
    torch.manual_seed(0)
    model = prepare_model(build_model(a.model, 4, **options), device, a.channels_last, a.compile).train()
    n = getattr(model, "num_patches", None)
    shape = (a.batch_size, n, 3, a.tile_size, a.tile_size) if n else (a.batch_size, 3, a.tile_size, a.tile_size)
    images = torch.randn(shape, device=device)
    labels = torch.randint(0, 4, (a.batch_size,), device=device)
    stage = a.stage if a.model == "two_level_cnn" else "train"
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], 1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = forward(model, images, labels, stage, channels_last=a.channels_last and device.type == "cuda").loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(a.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for _ in range(a.repeats):
        sync()
        tic = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync()
        rates.append(a.steps * a.batch_size / (time.perf_counter() - tic))
    median = statistics.median(rates)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    print(f"{a.model} {tuple(shape)} on {device}, amp {dtype}, stage {stage}: {median:.2f} images/s "
          f"(min {min(rates):.2f}, max {max(rates):.2f})" + (f", peak {memory:.1f} GiB" if memory else ""))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"machine": machine_info(), "args": {k: str(v) if isinstance(v, Path) else v
                                                                      for k, v in vars(a).items()},
                                  "images_per_s": rates, "median": median, "peak_gib": memory}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
