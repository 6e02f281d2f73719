"""histofast.train / evaluate at tiny sizes (tile 64, image 320, few channels): a training step
lowers the loss, resume is exact, checkpoints are weights_only-safe, metrics and plots are written, bad
input is refused clearly; and the `histofast train` / `evaluate` commands."""
from __future__ import annotations

import json

import pytest
import torch

from histofast import HistofastError, synth
from histofast.models import build_model
from histofast.train import TrainingError, fit, forward, read_checkpoint
from histofast.train.config import TrainConfig

TINY = dict(tile_size=64, image_size=320, stride=64, patch_widths=[4, 8, 8, 8], image_widths=[8, 8], batch_size=4,
            log_interval=1, lanes=2, backend="torch", val_fraction=0.5, device="cpu")


@pytest.fixture(scope="session")
def regions(tmp_path_factory):
    """4 classes × 4 regions of 320² (2 patients per class): one 320 image, 25 patches of 64, per region."""
    return synth.write_region_dataset(tmp_path_factory.mktemp("regions"), n_per_class=4, size=320, seed=5,
                                      patients_per_class=2)


def config(regions, tmp_path, **changes) -> TrainConfig:
    return TrainConfig(**{"data": str(regions / "manifest.csv"), "out": str(tmp_path / "run"), **TINY, **changes})


def _batch(regions, image_size=320, n=4):
    from histofast import Pipeline

    pipe = Pipeline(regions / "manifest.csv", 64, 64, mode="images", image_size=image_size, batch_size=n,
                    backend="torch", lanes=1, progress=False, seed=1)
    return next(iter(pipe))


@pytest.mark.parametrize("name, stage, options", [
    ("two_level_cnn", "patch", dict(tile_size=64, image_size=320, patch_stride=64, patch_widths=(4, 8, 8, 8),
                                    image_widths=(8, 8))),
    ("two_level_cnn", "image", dict(tile_size=64, image_size=320, patch_stride=64, patch_widths=(4, 8, 8, 8),
                                    image_widths=(8, 8))),
    ("two_level_cnn", "finetune", dict(tile_size=64, image_size=320, patch_stride=64, patch_widths=(4, 8, 8, 8),
                                       image_widths=(8, 8))),
    ("simple_cnn", "train", dict(widths=(8, 16))),
    ("googlenet", "train", dict(aux_logits=True)),
])
def test_training_steps_reduce_the_loss(regions, name, stage, options):
    torch.manual_seed(0)
    model = build_model(name, 4, **options)
    batch = _batch(regions)
    images = batch["image"] if name == "two_level_cnn" else batch["image"][:, :6]  # 6 patches per image
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    model.train()
    if stage == "image":
        model.patch_net.eval()
    frozen = {k: v.clone() for k, v in model.patch_net.state_dict().items()} if stage == "image" else None
    losses = []
    for _ in range(8):
        out = forward(model, images, batch["label"], stage)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0], losses
    if frozen is not None:  # the image stage trains on frozen patch maps
        assert all(torch.equal(v, model.patch_net.state_dict()[k]) for k, v in frozen.items())


def test_fit_from_python_prints_its_log_as_it_goes(regions, tmp_path, capsys):
    """Called from Python (no CLI), fit shows the same lines histofast train prints; report= routes them."""
    fit(config(regions, tmp_path, epochs=1, patch_epochs=1), progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training two_level_cnn") and any(line.startswith("epoch 2 (image):") for line in lines)
    seen: list[str] = []
    fit(config(regions, tmp_path / "again", epochs=1, patch_epochs=1), progress=False, report=seen.append)
    assert capsys.readouterr().out == "" and seen[0].startswith("training two_level_cnn")


def test_a_run_that_cannot_start_leaves_no_folder(regions, tmp_path):
    cfg = config(regions, tmp_path, epochs=1, patch_epochs=1, image_size=4096)  # larger than every region
    with pytest.raises(HistofastError, match=r"no tissue images .* smaller than one image \(image_size=4096\)"):
        fit(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_fit_writes_checkpoints_metrics_and_plots(regions, tmp_path):
    cfg = config(regions, tmp_path, epochs=1, patch_epochs=1)
    result = fit(cfg, progress=False)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"last.pt", "best.pt", "history.jsonl", "steps.jsonl", "curves.png",
                                              "roc.png", "confusion.png"}
    state = torch.load(run / "last.pt", weights_only=True)  # only weights_only-safe values
    assert state["epoch"] == 2 and state["stage"] == "image" and state["classes"] == ["ADC", "NORM", "SC", "SCLC"]
    assert TrainConfig.from_dict(state["config"]).patch_widths == [4, 8, 8, 8]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in history] == ["patch", "image"] == [r["stage"] for r in result.history]
    val = history[-1]["val"]
    assert set(val) >= {"loss", "patch_acc", "image_acc", "slide_acc", "patch", "image", "slide"}
    assert len(val["image"]["confusion"]) == 4 and len(val["image"]["auc"]) == 4
    assert sum(map(sum, val["image"]["confusion"])) == 8  # 2 patients × 4 classes held out, 1 image each
    assert sum(map(sum, val["patch"]["confusion"])) == 8 * 25
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 4 and steps[0]["batch"] == 1  # 2 batches of 4 images × 2 epochs
    assert result.best["metric"] == "val_image_acc" and result.best["epoch"] == 1  # patch stage: no candidate


@pytest.mark.parametrize("log_interval", [3, 2])
def test_steps_log_each_epochs_last_batch_once(regions, tmp_path, log_interval):
    """2 batches an epoch: with log_interval 3 the last batch is still logged (its record covers both batches); with
    2 it is logged once, not again at the end of the epoch."""
    lines = []
    result = fit(config(regions, tmp_path, epochs=1, patch_epochs=1, log_interval=log_interval), progress=False,
                 report=lines.append)
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["stage"], r["batch"]) for r in steps] == [(0, "patch", 2), (1, "image", 2)]
    for r, epoch in zip(steps, result.history):  # 2 full batches: the mean of both is the epoch's training loss
        assert r["loss"] == pytest.approx(epoch["train"]["loss"], rel=1e-5)
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 1/2 (patch) batch 2/2", "epoch 1 (patch)",
                                                          "epoch 2/2 (image) batch 2/2", "epoch 2 (image)"]
    assert lines[0].startswith("training two_level_cnn (4 classes: ADC, NORM, SC, SCLC) for 2 epochs on cpu")
    assert lines[2].endswith("s; 1/2 epochs done") and "val loss" in lines[2]


def test_fit_reports_to_a_logger_when_given_its_method(regions, tmp_path, caplog, capsys):
    import logging

    with caplog.at_level(logging.INFO, logger="histofast.train.run"):
        fit(config(regions, tmp_path, epochs=1, patch_epochs=0, log_interval=5), progress=False,
            report=logging.getLogger("histofast.train.run").info)
    assert capsys.readouterr().out == ""  # routed: nothing printed
    assert [r.getMessage().split(":")[0] for r in caplog.records][1:] == ["epoch 1/1 (image) batch 2/2",
                                                                         "epoch 1 (image)"]


def test_resume_of_a_finished_run_trains_and_writes_nothing(regions, tmp_path):
    cfg = config(regions, tmp_path, epochs=1, patch_epochs=0)
    first = fit(cfg, progress=False)
    run = tmp_path / "run"
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    lines = []
    again = fit(cfg, resume=run / "last.pt", progress=False, report=lines.append)
    assert again.already_complete and not first.already_complete and lines == []
    assert again.history == first.history and again.best == first.best
    assert again.checkpoint == run / "last.pt" and again.best_checkpoint == run / "best.pt"
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamps
    more = fit(config(regions, tmp_path, epochs=2, patch_epochs=0), resume=run / "last.pt", progress=False)
    assert not more.already_complete and len(more.history) == 2 and read_checkpoint(run / "last.pt")["epoch"] == 2


def _interrupt_after(monkeypatch, calls: int):
    """Make fit's (calls+1)-th training epoch raise KeyboardInterrupt, as a killed run would stop."""
    import histofast.train.run as train

    real, seen = train.run_epoch, []

    def run_epoch(*args, **kwargs):
        if kwargs.get("optimizer") is not None:
            seen.append(1)
            if len(seen) > calls:
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "run_epoch", run_epoch)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(regions, tmp_path, monkeypatch, optimizer):
    """3 epochs (patch stage, image stage, end to end; dropout, shuffling, augmentation) in one go, or stopped after
    epoch 2 and resumed: identical weights, optimizer state and history."""
    changes = dict(epochs=1, patch_epochs=1, finetune_epochs=1, optimizer=optimizer,
                   lr_steps=[1] if optimizer == "sgd" else None)
    whole = fit(config(regions, tmp_path / "a", **changes), progress=False)
    cfg = config(regions, tmp_path / "b", **changes)
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, progress=False)
    assert read_checkpoint(tmp_path / "b" / "run" / "last.pt")["epoch"] == 2
    resumed = fit(cfg, resume=tmp_path / "b" / "run" / "last.pt", progress=False)
    a, b = (read_checkpoint(r.checkpoint) for r in (whole, resumed))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]
    assert len((tmp_path / "b" / "run" / "steps.jsonl").read_text().splitlines()) == \
        len((tmp_path / "a" / "run" / "steps.jsonl").read_text().splitlines())


def test_resume_refuses_changed_settings(regions, tmp_path):
    cfg = config(regions, tmp_path, epochs=1, patch_epochs=0)
    fit(cfg, progress=False)
    with pytest.raises(HistofastError, match="other settings of lr"):
        fit(config(regions, tmp_path, epochs=2, patch_epochs=0, lr=0.1), resume=tmp_path / "run" / "last.pt")
    with pytest.raises(HistofastError, match="holds the run of .*last.pt; resume it"):
        fit(cfg)  # a second run into the same folder would overwrite the first


def test_nan_loss_stops_naming_the_batch_and_keeps_the_last_good_checkpoint(regions, tmp_path, monkeypatch):
    import histofast.train.loop as train

    real = train.forward
    calls = []

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:  # epoch 2 (after epoch 1's 2 train + 2 val batches), batch 1
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train, "forward", forward)
    cfg = config(regions, tmp_path, epochs=2, patch_epochs=0, log_interval=50)
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 2/2 image batch 1: stopped; the last good "
                                            r"checkpoint is .*last.pt \(try a lower --lr"):
        fit(cfg, progress=False)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_evaluate_with_tta_and_slide_aggregation(regions, tmp_path):
    from histofast.train.evaluate import evaluate

    fit(config(regions, tmp_path, epochs=1, patch_epochs=1), progress=False)
    one = evaluate(tmp_path / "run" / "last.pt", regions / "manifest.csv", device="cpu", progress=False)
    eight = evaluate(tmp_path / "run" / "last.pt", regions / "manifest.csv", tta=8, out=tmp_path / "ev",
                     device="cpu", progress=False)
    assert set(one.reports) == {"patch", "image", "slide"}
    assert one.reports["image"].count == 16 and one.reports["patch"].count == 16 * 25
    assert len(eight.slides) == 16 and all(r["samples"] == 1 for r in eight.slides)
    assert abs(sum(v for k, v in eight.slides[0].items() if k.startswith("p_")) - 1) < 1e-5
    assert not torch.allclose(torch.tensor(one.reports["image"].auc), torch.tensor(eight.reports["image"].auc))
    assert {p.name for p in (tmp_path / "ev").iterdir()} >= {"metrics.json", "slides.csv", "roc_image.png",
                                                             "confusion_slide.png"}
    assert "macro AUC" in eight.table()


def test_evaluate_unlabelled_slides_gives_predictions_only(regions, tmp_path):
    from histofast.train.evaluate import evaluate

    fit(config(regions, tmp_path, epochs=1, patch_epochs=0), progress=False)
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text(f"path\n{regions}/NORM/NORM_000.png\n{regions}/SC/SC_001.png\n")
    ev = evaluate(tmp_path / "run" / "last.pt", unlabelled, device="cpu", progress=False)
    assert ev.reports == {} and [r["label"] for r in ev.slides] == ["", ""]
    assert {r["predicted"] for r in ev.slides} <= {"ADC", "NORM", "SC", "SCLC"}


def test_resume_refuses_a_shifted_stage_schedule(regions, tmp_path, monkeypatch):
    cfg = config(regions, tmp_path, epochs=1, patch_epochs=1)
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, progress=False)
    longer = config(regions, tmp_path, epochs=1, patch_epochs=2)  # fine: the patch stage is still running
    assert fit(longer, resume=tmp_path / "run" / "last.pt", progress=False).history[1]["stage"] == "patch"
    with pytest.raises(HistofastError, match=r"its 3 epochs were \['patch', 'patch', 'image'\], but these settings "
                                             r"schedule \['patch', 'image', 'image'\]"):
        fit(config(regions, tmp_path, epochs=2, patch_epochs=1), resume=tmp_path / "run" / "last.pt")


def test_evaluate_refuses_a_checkpoint_that_does_not_fit(regions, tmp_path):
    from histofast.train import model_from_checkpoint

    fit(config(regions, tmp_path, epochs=1, patch_epochs=0), progress=False)
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    state["classes"] = ["a", "b"]  # as if trained on 2 classes
    with pytest.raises(HistofastError, match=r"does not fit TwoLevelCNN .*shape mismatch: patch_net.classifier.weight "
                                             r"\(4, 64\) in the file vs \(2, 64\)"):
        model_from_checkpoint(state, "x.pt")
    with pytest.raises(HistofastError, match="not a histofast checkpoint"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "bare.pt")
        read_checkpoint(tmp_path / "bare.pt")


def test_bad_training_input(regions, tmp_path):
    single = tmp_path / "single.csv"
    single.write_text("path,label,patient\n" + "".join(
        f"{regions}/NORM/NORM_00{i}.png,NORM,p{i}\n" for i in range(4)))
    with pytest.raises(HistofastError, match="a single class \\('NORM'\\)"):
        fit(config(regions, tmp_path, data=str(single), val_fraction=0.0), progress=False)
    with pytest.raises(HistofastError, match="image_size=48: must be an integer ≥ tile_size=64"):
        fit(config(regions, tmp_path, image_size=48), progress=False)
    with pytest.raises(HistofastError, match="model='vgg': unknown"):
        fit(config(regions, tmp_path, model="vgg", image_size=None), progress=False)
    with pytest.raises(HistofastError, match="batch_size=0"):
        config(regions, tmp_path, batch_size=0)
    with pytest.raises(HistofastError, match="optimizer='rmsprop': expected one of adam, sgd"):
        config(regions, tmp_path, optimizer="rmsprop")
    with pytest.raises(HistofastError, match="data: required"):
        TrainConfig()
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text(f"path\n{regions}/NORM/NORM_000.png\n")
    with pytest.raises(HistofastError, match="1 slides have no label"):
        fit(config(regions, tmp_path, data=str(unlabelled)), progress=False)


def test_train_and_evaluate_commands(regions, tmp_path, capsys):
    from histofast.cli import main

    out = tmp_path / "cli"
    assert main(["train", str(regions / "manifest.csv"), "--out", str(out), "--model", "simple_cnn", "--tile-size",
                 "64", "--epochs", "1", "--batch-size", "16", "--lanes", "2", "--backend", "torch", "--device",
                 "cpu", "--val-fraction", "0.5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1 (train): train loss" in printed and "best: val_patch_acc" in printed
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--quiet"]) == 0
    assert read_checkpoint(out / "last.pt")["epoch"] == 2
    assert main(["evaluate", str(out / "best.pt"), str(regions / "manifest.csv"), "--tta", "8", "--out",
                 str(tmp_path / "ev"), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "patch level" in printed and "slide level" in printed and "NORM_000.png" in printed
    assert main(["train", str(regions / "manifest.csv"), "--model", "resnet", "--out", str(out)]) == 2
    assert "histofast train: --model 'resnet': unknown" in capsys.readouterr().err  # the flag the user typed


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_fit_and_evaluate_on_cuda(regions, tmp_path, amp):
    """All three stages on the GPU (augmentation on the device, channels-last, autocast), then evaluation."""
    from histofast.train.evaluate import evaluate

    result = fit(config(regions, tmp_path, epochs=1, patch_epochs=1, finetune_epochs=1, device="cuda", amp=amp),
                 progress=False)
    assert all(r["train"]["loss"] == r["train"]["loss"] for r in result.history)  # finite: fit checks inf/NaN
    ev = evaluate(result.checkpoint, regions / "manifest.csv", tta=8, device="cuda", progress=False)
    assert ev.reports["image"].count == 16


def test_fit_on_tfrecord_shards(regions, tmp_path):
    """Tiles exported by `histofast tile --format tfrecord` (one class per export, --label) train a tile model."""
    pytest.importorskip("nvidia.dali")
    from histofast.export import ExportOptions, export_slides

    for split, index in (("train", (0, 1)), ("val", (2, 3))):
        for label, name in enumerate(("NORM", "SC")):
            export_slides([regions / name / f"{name}_00{i}.png" for i in index], tmp_path / split / name,
                          ExportOptions(tile_size=64, stride=64, format="tfrecord", label=label), progress=False)
    cfg = TrainConfig(data=str(tmp_path / "train"), val_data=str(tmp_path / "val"), classes=["NORM", "SC"],
                      model="simple_cnn", tile_size=64, batch_size=32, epochs=1, out=str(tmp_path / "run"),
                      device="cpu", lanes=1)
    result = fit(cfg, progress=False)
    val = result.history[0]["val"]
    assert val["patch"]["count"] == 4 * 25 and val["slide"]["count"] == 4  # TFRecord batches carry a slide index
    with pytest.raises(HistofastError, match="name the classes with --classes"):
        fit(TrainConfig(data=str(tmp_path / "train"), out=str(tmp_path / "x")), progress=False)
