"""`histofast train` / `evaluate` as a user runs them: the run's log lines reach a file or pipe as they happen,
--resume of a finished run changes nothing, and evaluate's default folder never overwrites another evaluation."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from histofast import synth
from histofast.cli import main
from histofast.train import read_checkpoint

TRAIN = ["--model", "simple_cnn", "--tile-size", "64", "--batch-size", "16", "--lanes", "2", "--backend", "torch",
         "--device", "cpu", "--val-fraction", "0.5"]


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """4 classes × 4 regions of 320² (2 patients per class), 25 tiles of 64 each."""
    return synth.write_region_dataset(tmp_path_factory.mktemp("regions"), n_per_class=4, size=320, seed=5,
                                      patients_per_class=2)


@pytest.fixture(scope="module")
def trained(regions, tmp_path_factory):
    """`histofast train` for 3 epochs with stdout to a pipe (not a terminal, no --quiet): the run folder, the lines
    printed, and whether the process was still running when the first epoch's line arrived."""
    out = tmp_path_factory.mktemp("trained") / "run"
    argv = [sys.executable, "-m", "histofast.cli", "train", str(regions / "manifest.csv"), "--out", str(out), *TRAIN,
            "--epochs", "3", "--log-interval", "5"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, running_at_epoch_1 = [], None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("epoch 1 (train):"):
            running_at_epoch_1 = proc.poll() is None
    stderr = proc.stderr.read()
    assert proc.wait(timeout=600) == 0, stderr
    return out, lines, running_at_epoch_1


def test_train_prints_a_line_per_log_interval_and_epoch_as_it_goes(trained):
    out, lines, running_at_epoch_1 = trained
    assert running_at_epoch_1  # flushed at once, not when the process ends
    epochs = [line for line in lines if line.startswith("epoch ") and " batch " not in line]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1 (train)", "epoch 2 (train)", "epoch 3 (train)"]
    assert all("train loss" in line and "val loss" in line and " s; " in line for line in epochs)
    assert epochs[-1].endswith("3/3 epochs done")
    # 8 training regions × 25 tiles = 13 batches of 16: every 5 batches and the last
    batches = [line.split(":")[0] for line in lines if " batch " in line]
    assert batches == [f"epoch {e}/3 (train) batch {b}/13" for e in (1, 2, 3) for b in (5, 10, 13)]
    assert all(line.endswith("samples/s") for line in lines if " batch " in line)
    assert lines[0].startswith("training simple_cnn (4 classes: ADC, NORM, SC, SCLC) for 3 epochs on cpu")
    assert lines[-2].startswith("best: val_patch_acc") and lines[-1].startswith("last: ")
    assert len(lines) == 1 + 3 + 9 + 2  # no summary of the epochs again at the end
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["batch"]) for r in steps] == [(e, b) for e in (0, 1, 2) for b in (5, 10, 13)]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["train", "--resume", str(run / "last.pt")]) == 0
    printed = capsys.readouterr().out
    assert f"{run / 'last.pt'}: already complete: 3 of 3 epochs, nothing to do; give more --epochs to continue" \
        in printed
    assert [line.split(":")[0] for line in printed.splitlines()] == [str(run / "last.pt"), "best"]  # no replay
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamps
    assert main(["train", "--resume", str(run / "last.pt"), "--out", str(run), "--epochs", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 4 (train): train loss" in printed and "epoch 3 (train)" not in printed
    assert read_checkpoint(run / "last.pt")["epoch"] == 4  # with more epochs the run goes on


def test_evaluate_default_folder_refuses_another_evaluation(trained, regions, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    for name, index in (("a", (0, 1)), ("b", (2, 3))):  # a/test.csv and b/test.csv: the same default folder
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.csv").write_text("path,label\n" + "".join(
            f"{regions}/{c}/{c}_00{i}.png,{c}\n" for c in ("NORM", "SC") for i in index))
    folder = run / "evaluate-test-tta1"
    args = ["--device", "cpu", "--quiet"]
    assert main(["evaluate", str(run / "last.pt"), str(tmp_path / "a" / "test.csv"), *args]) == 0
    assert f"metrics.json, slides.csv and plots in {folder}" in capsys.readouterr().out
    metrics = (folder / "metrics.json").read_text()
    assert json.loads(metrics)["data"] == str(tmp_path / "a" / "test.csv")
    assert main(["evaluate", str(run / "last.pt"), str(tmp_path / "b" / "test.csv"), *args]) == 2
    err = capsys.readouterr().err
    assert f"{folder} holds the evaluation of {run / 'last.pt'} on {tmp_path / 'a' / 'test.csv'}; pass --out" in err
    assert main(["evaluate", str(run / "best.pt"), str(tmp_path / "a" / "test.csv"), *args]) == 2  # other model
    assert "pass --out" in capsys.readouterr().err
    assert (folder / "metrics.json").read_text() == metrics  # the first evaluation is kept
    assert main(["evaluate", str(run / "last.pt"), str(tmp_path / "a" / "test.csv"), *args]) == 0  # again: fine
    assert main(["evaluate", str(run / "last.pt"), str(tmp_path / "b" / "test.csv"), *args, "--out",
                 str(tmp_path / "b-ev")]) == 0
    assert json.loads((tmp_path / "b-ev" / "metrics.json").read_text())["data"] == str(tmp_path / "b" / "test.csv")


def _readme_cpu_train_command() -> list[str]:
    """The README's CPU training command, as a user pastes it (its continuation lines joined)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("histofast train slides/manifest.csv --out runs/two-level-cpu"):]
    command = block[: block.index("\n#")].replace("\\\n", " ").split()
    assert command[:2] == ["histofast", "train"] and "--device" in command
    return command[2:]


def test_the_readmes_cpu_training_command_trains_on_the_readmes_data(tmp_path, monkeypatch, capsys):
    """On the README's own data (write_region_dataset as its snippet calls it), the README's CPU command runs;
    here with one batch an epoch and one epoch a stage (appended flags win) to keep the test short."""
    monkeypatch.chdir(tmp_path)
    synth.write_region_dataset("slides", classes=("NORM", "ADC"), n_per_class=6, size=512, patients_per_class=3)
    argv = ["train", *_readme_cpu_train_command(), "--patch-epochs", "1", "--epochs", "1", "--max-batches", "1",
            "--quiet"]
    assert main(argv) == 0
    assert (tmp_path / "runs" / "two-level-cpu" / "best.pt").is_file()
    assert "epoch 2 (image):" in capsys.readouterr().out


def test_a_train_run_that_cannot_start_names_the_flags_and_leaves_nothing(regions, tmp_path, capsys):
    """Images larger than every region: the messages name --image-size (what the user typed), not image_size=,
    and no empty --out folder is left behind."""
    out = tmp_path / "run"
    argv = ["train", str(regions / "manifest.csv"), "--out", str(out), "--model", "two_level_cnn", "--tile-size", "64",
            "--image-size", "2560", "--device", "cpu", "--lanes", "1", "--backend", "torch", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "smaller than one image (--image-size 2560)" in err and "image_size=" not in err
    assert "--max-white 0.5" in err and "tile_size=" not in err
    assert not out.exists()
