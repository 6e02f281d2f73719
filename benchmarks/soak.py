"""Memory over many epochs: a ``Pipeline`` over generated slides iterated for many epochs, its resident set size
(RSS, MB) printed every few epochs. Batches are only touched (summed), as a training step would read them.

    python benchmarks/soak.py                       # 3 slides, ~145 tiles of 256² an epoch, 100 epochs, torch backend
    python benchmarks/soak.py --epochs 40 --every 5 --json rss.json
    MALLOC_ARENA_MAX=1 python benchmarks/soak.py    # the same with one malloc arena, for comparison

The last line is JSON: ``{"epochs": [...], "rss_mb": [...], "tiles": n, ...}`` (RSS after each printed epoch).
``tests/data/test_soak.py`` runs a short soak of this script and checks the RSS has no upward trend."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import histofast as hf

SIZES = ((3072, 2048), (2560, 2048), (2048, 2048))  # slide pixels; with tissue_fraction 0.6: ~145 kept 256² tiles


def rss_mb() -> float:
    """This process's resident set size in MB (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="print the RSS every this many epochs")
    parser.add_argument("--scale", type=float, default=1.0, help="slide sides × this (smaller: a quicker soak)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--lanes", type=int, default=None)
    parser.add_argument("--folder", default=None, help="where the slides are written (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, (w, h) in enumerate(SIZES):
            path = folder / f"soak{k}_{args.scale:g}.svs"
            if not path.exists():
                hf.synth.write_slide(path, int(w * args.scale), int(h * args.scale), seed=k, tissue_fraction=0.6)
            paths.append(path)
        pipe = hf.Pipeline(paths, grid=hf.GridSpec(args.tile), batch=hf.BatchFormat(args.batch),
                           backend=args.backend, lanes=args.lanes, progress=False)
        tiles = pipe.tile_dataset.num_samples
        epochs, rss = [], []
        for epoch in range(1, args.epochs + 1):
            seen = 0
            for batch in pipe:
                seen += len(batch["label"])
                float(batch["image"][:, :, ::32, ::32].sum())  # read, as a step would
            assert seen == tiles, (seen, tiles)
            if epoch % args.every == 0 or epoch == 5:
                epochs.append(epoch)
                rss.append(round(rss_mb(), 1))
                print(f"epoch {epoch:4d}: RSS {rss[-1]:7.1f} MB", flush=True)
        pipe.tile_dataset.close()
    result = {"epochs": epochs, "rss_mb": rss, "tiles": tiles, "batch_size": args.batch, "backend": pipe.backend,
              "scale": args.scale}
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
