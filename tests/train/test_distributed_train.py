"""histofast train on several ranks (CPU, gloo), at tiny sizes: `histofast train` under torchrun with 2 ranks
runs all three two-level stages, resumes exactly, counts every validation sample once and lets rank 0 alone
write; `fit` in a process group the caller made (torch.multiprocessing.spawn) trains 2 ranks × batch B as one
rank × batch 2B does, and leaves the caller's group alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from histofast import synth
from histofast.train import read_checkpoint

HERE = Path(__file__).parent
TIMEOUT = 120  # seconds per torchrun launch (each takes well under 20 on a 2-core machine)
TWO_LEVEL = ["--tile-size", "64", "--stride", "64", "--image-size", "320", "--patch-widths", "4", "8", "8", "8",
             "--image-widths", "8", "8", "--batch-size", "2", "--log-interval", "1", "--lanes", "2", "--backend",
             "torch", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """4 classes × 4 regions of 320² (25 tiles of 64 each, all kept). train.csv holds 7 regions and val.csv 5,
    so both are uneven over 2 ranks (a repeat, label −100, evens the shards out); train3.csv holds 3 (75 tiles)."""
    root = synth.write_region_dataset(tmp_path_factory.mktemp("regions"), n_per_class=4, size=320, seed=5,
                                      patients_per_class=2)

    def manifest(name: str, regions: list[str]) -> None:
        (root / name).write_text("path,label\n" + "".join(f"{r.split('_')[0]}/{r}.png,{r.split('_')[0]}\n"
                                                           for r in regions))

    manifest("train.csv", ["NORM_000", "NORM_001", "SCLC_000", "SCLC_001", "SC_000", "SC_001", "ADC_000"])
    manifest("val.csv", ["NORM_002", "SCLC_002", "SC_002", "ADC_002", "ADC_003"])
    manifest("train3.csv", ["NORM_000", "SC_000", "ADC_000"])
    return root


def torchrun(args: list[str], out: Path, ranks: int = 2) -> str:
    """`histofast train ARGS` under torchrun (--standalone: a free port of its own); its output, after
    checking it succeeded and that no rank but 0 wrote under ``out``."""
    env = {**os.environ, "HISTOFAST_TEST_WATCH": str(out)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(ranks), str(HERE / "torchrun_train.py"), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=HERE)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert " wrote " not in output, [line for line in output.splitlines() if " wrote " in line]
    return done.stdout


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_histofast_train_under_torchrun_resumes_exactly_and_rank_0_alone_writes(regions, tmp_path):
    """Patch, image and finetune stages on 2 ranks in one go, or stopped after the image stage and resumed
    with a finetune epoch more: the same weights, optimizer state, history and steps, bit for bit."""
    data = [str(regions / "train.csv"), "--val-data", str(regions / "val.csv"), *TWO_LEVEL]
    whole = tmp_path / "whole"
    printed = torchrun([*data, "--out", str(whole), "--patch-epochs", "1", "--epochs", "1", "--finetune-epochs",
                        "1"], tmp_path)
    assert printed.count("epoch 3 (finetune): train loss") == 1  # one rank prints
    assert "on 2 ranks (cpu, gloo)" in printed and "2 batches of 2" in printed  # 4 of the 7 images a rank
    part = tmp_path / "part"
    torchrun([*data, "--out", str(part), "--patch-epochs", "1", "--epochs", "1"], tmp_path)
    assert read_checkpoint(part / "last.pt")["epoch"] == 2
    printed = torchrun(["--resume", str(part / "last.pt"), "--finetune-epochs", "1", "--quiet"], tmp_path)
    assert "from epoch 3" in printed and printed.count("last: ") == 1

    a, b = read_checkpoint(whole / "last.pt"), read_checkpoint(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["world_size"] == 2 and len(a["rng_ranks"]) == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
    assert _without_seconds(a["history"]) == _without_seconds(b["history"])
    assert [r["batch"] for r in _records(whole / "steps.jsonl")] == [r["batch"] for r in _records(part / "steps.jsonl")]
    assert {p.name for p in whole.iterdir()} == {"last.pt", "best.pt", "history.jsonl", "steps.jsonl", "curves.png",
                                                 "roc.png", "confusion.png"}
    for record in a["history"]:  # every image of both splits counted once: the repeats are not
        assert record["train"]["patch"]["count"] == 7 * 25 and record["val"]["patch"]["count"] == 5 * 25
        assert record["val"]["slide"]["count"] == 5
        if record["stage"] != "patch":
            assert record["train"]["image"]["count"] == 7 and record["val"]["image"]["count"] == 5


def _spawned_fit(rank: int, world: int, store: str, configs: list[dict], result: str) -> None:
    """One rank of a user's script: it makes the process group itself, then calls fit with each config in turn;
    what each gave (its history, or the message of the HistofastError it raised) goes to ``result.RANK``."""
    import torch.distributed as dist
    from torchrun_train import plain_cnn

    from histofast import HistofastError
    from histofast.models import MODELS
    from histofast.train import TrainConfig, fit

    torch.set_num_threads(1)
    MODELS["plain_cnn"] = plain_cnn
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    outcomes = []
    try:
        for config in configs:
            try:
                fitted = fit(TrainConfig(**config), progress=False)
            except HistofastError as e:
                outcomes.append({"error": str(e)})
                continue
            outcomes.append({"rank": fitted.rank, "group_kept": dist.is_initialized(),  # the caller's: fit leaves it
                             "history": _without_seconds(fitted.history)})
        Path(f"{result}.{rank}").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


def spawn(tmp_path: Path, configs: list[dict], ranks: int = 2) -> list[list[dict]]:
    """``_spawned_fit`` in ``ranks`` processes started by torch.multiprocessing (spawn): each rank's outcomes."""
    return spawn_ranks(tmp_path, _spawned_fit, configs, ranks=ranks)


def spawn_ranks(tmp_path: Path, target: Any, *args: Any, ranks: int = 2) -> list[Any]:
    """``target(rank, world, store, *args, result)`` in ``ranks`` spawned processes, each writing JSON to
    ``result.RANK``; every rank's JSON, after checking each exited 0 within ``TIMEOUT``."""
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, ranks, str(tmp_path / "store"), *args, str(tmp_path / "r")))
             for r in range(ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * ranks
    return [json.loads(Path(f"{tmp_path / 'r'}.{r}").read_text()) for r in range(ranks)]


def test_two_ranks_with_batch_b_train_as_one_rank_with_batch_2b(regions, tmp_path, monkeypatch):
    """A model without BatchNorm or dropout, 3 epochs of one step each: one process with all 75 training tiles
    in a batch, or 2 ranks (in a process group the script made) with 38 each, one of them a repeat (label −100)
    that the loss leaves out while each rank's mean loss is weighted by its labelled tiles. The weights agree to
    float rounding (the tiles are summed in another order), and so do the losses and validation counts."""
    from torchrun_train import plain_cnn

    from histofast.models import MODELS
    from histofast.train import TrainConfig, fit

    common = dict(data=str(regions / "train3.csv"), val_data=str(regions / "val.csv"), model="plain_cnn",
                  classes=["ADC", "NORM", "SC", "SCLC"], tile_size=64, epochs=3, lanes=1, backend="torch",
                  device="cpu", log_interval=1)
    monkeypatch.setitem(MODELS, "plain_cnn", plain_cnn)
    one = fit(TrainConfig(**common, batch_size=2 * 38, out=str(tmp_path / "one")), progress=False)

    results = [outcome for outcome, in spawn(tmp_path, [dict(common, batch_size=38, out=str(tmp_path / "two"))])]
    assert [r["rank"] for r in results] == [0, 1] and all(r["group_kept"] for r in results)
    assert results[0]["history"] == results[1]["history"]  # every rank returns rank 0's records

    a, b = read_checkpoint(tmp_path / "one" / "last.pt"), read_checkpoint(tmp_path / "two" / "last.pt")
    assert b["world_size"] == 2 and b["config"]["batch_size"] == 38
    torch.manual_seed(0)  # fit's seed: the weights both runs start from
    start = plain_cnn(4).state_dict()
    diff = max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in start)
    moved = max((a["state_dict"][k] - start[k]).abs().max().item() for k in start)
    print(f"1 rank × batch 76 vs 2 ranks × batch 38, 3 steps: max weight difference {diff:.3g} (weights moved up "
          f"to {moved:.3g})")
    assert moved > 1e-3 and diff < 1e-5
    for x, y in zip(one.history, results[0]["history"]):
        assert x["train"]["patch"]["count"] == y["train"]["patch"]["count"] == 3 * 25
        assert x["val"]["patch"]["count"] == y["val"]["patch"]["count"] == 5 * 25
        assert x["train"]["loss"] == pytest.approx(y["train"]["loss"], rel=1e-5)
        assert x["val"]["loss"] == pytest.approx(y["val"]["loss"], rel=1e-5)


def test_sync_batchnorm_replaces_the_trained_batchnorm_layers_only():
    from torch import nn

    from histofast.models import build_model, freeze
    from histofast.train.distributed import World, sync_batchnorm

    model = build_model("simple_cnn", 2, widths=(4, 8, 8))
    keys = list(model.state_dict())
    freeze(model, "classifier")  # every conv block frozen
    assert sync_batchnorm(model) == 0
    model = build_model("two_level_cnn", 2, tile_size=64, image_size=128, patch_stride=64, patch_widths=(4, 4, 4, 4),
                        image_widths=(4,))
    keys = list(model.state_dict())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sync_batchnorm(model) == bns and list(model.state_dict()) == keys
    assert all(type(m) is not nn.BatchNorm2d for m in model.modules())
    world = World()  # one process: the collectives give back what they are given
    assert world.gather(3) == [3] and world.broadcast("x") == "x" and not world.distributed and world.main


def test_a_check_only_rank_0_can_make_stops_every_rank(regions, tmp_path):
    """Rank 0 alone looks at the output folder, but every rank raises its verdict (none is left waiting);
    --sync-bn on the CPU is refused on every rank."""
    common = dict(data=str(regions / "train3.csv"), val_data=str(regions / "val.csv"), model="plain_cnn",
                  classes=["ADC", "NORM", "SC", "SCLC"], tile_size=64, epochs=1, lanes=1, backend="torch",
                  device="cpu", batch_size=64)
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "last.pt").write_bytes(b"")
    outcomes = spawn(tmp_path, [dict(common, out=str(tmp_path / "held")),
                                dict(common, out=str(tmp_path / "bn"), sync_bn=True)])
    for held, bn in outcomes:
        assert "holds the run of" in held["error"] and "SyncBatchNorm runs on GPUs only" in bn["error"]
    assert not (tmp_path / "bn").exists()


def _spawned_evaluate(rank: int, world: int, store: str, checkpoint: str, data: str, out: str, result: str) -> None:
    """One rank of a user's script calling ``evaluate`` inside the process group it made."""
    import torch.distributed as dist
    from torchrun_train import plain_cnn

    from histofast.models import MODELS
    from histofast.train.evaluate import evaluate

    torch.set_num_threads(1)
    MODELS["plain_cnn"] = plain_cnn
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        scored = evaluate(checkpoint, data, out=out, device="cpu", lanes=1, progress=False)
        Path(f"{result}.{rank}").write_text(json.dumps(scored.reports["patch"].to_dict()))
    finally:
        dist.destroy_process_group()


def test_evaluate_in_a_process_group_counts_every_tile_once(regions, tmp_path, monkeypatch):
    """Every rank scores its shard (5 regions over 2 ranks: one repeat, label −100), the outputs are gathered:
    each rank returns what one process gives, and rank 0 alone writes the files."""
    from torchrun_train import plain_cnn

    from histofast.models import MODELS
    from histofast.train import TrainConfig, fit
    from histofast.train.evaluate import evaluate

    monkeypatch.setitem(MODELS, "plain_cnn", plain_cnn)
    fit(TrainConfig(data=str(regions / "train3.csv"), val_fraction=0, model="plain_cnn", tile_size=64, epochs=1,
                    classes=["ADC", "NORM", "SC", "SCLC"], lanes=1, backend="torch", device="cpu",
                    batch_size=32, out=str(tmp_path / "run")), progress=False)
    checkpoint, data = str(tmp_path / "run" / "last.pt"), str(regions / "val.csv")
    alone = evaluate(checkpoint, data, device="cpu", lanes=1, progress=False).reports["patch"].to_dict()
    for got in spawn_ranks(tmp_path, _spawned_evaluate, checkpoint, data, str(tmp_path / "eval")):
        assert got["count"] == alone["count"] == 5 * 25
        assert got["accuracy"] == pytest.approx(alone["accuracy"])
    assert (tmp_path / "eval" / "metrics.json").exists()
