"""The runnable examples: each runs (``--quick``) in a fresh interpreter, prints its result, and leaves nothing
in the temporary folder (TMPDIR points at an empty folder of the test's own for the run). About 45 s in all
on a 2-core CPU."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(tmp_path: Path, script: str, *args: str) -> str:
    """``python examples/SCRIPT ARGS`` with TMPDIR an empty folder; its output; asserts exit status 0 and that
    TMPDIR is empty again afterwards."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=os.fspath(tmp), PYTHONUNBUFFERED="1",
               # torch creates its (empty) compile cache $TMPDIR/torchinductor_$USER when an optimizer is built;
               # it is torch's, kept by design: put it elsewhere so that TMPDIR shows what the example left.
               TORCHINDUCTOR_CACHE_DIR=os.fspath(tmp_path / "torch-cache"))
    proc = subprocess.run([sys.executable, os.fspath(EXAMPLES / script), *args], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert list(tmp.iterdir()) == [], f"{script} left {[p.name for p in tmp.iterdir()]} in TMPDIR"
    return proc.stdout


def table_row(output: str, name: str) -> list[str]:
    """The cells of the result table's row of ``name``."""
    rows = [line for line in output.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, output[-3000:]
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


@pytest.mark.parametrize("script", ["paper_chain.py", "two_level.py"])
def test_help(script, capsys):
    spec = importlib.util.spec_from_file_location(script[:-3], EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit:
        module.main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--out" in out


def test_paper_chain(tmp_path):
    out = run_example(tmp_path, "paper_chain.py", "--quick")
    assert "$ histofast tile slides/train/ADC --out tiles/train/ADC" in out and "--format tfrecord --label 0" in out
    assert "Inception v3 trains from random initialisation" in out
    assert "Result: 2 classes (ADC, SC), test patients never seen in training" in out
    for model in ("simple_cnn", "inception_v3"):
        row = table_row(out, model)
        assert row[1] == "random"
        assert 0 <= float(row[6]) <= 1 and 0 <= float(row[7]) <= 1  # tile accuracy and AUC
    assert table_row(out, "inception_v3")[3] == "80"  # the input size, resized from 128-pixel tiles
    assert "temporary folder removed" in out


def test_paper_chain_weights_and_out(tmp_path):
    """--weights: a torchvision-layout Inception v3 state dict (1000 classes, aux head) starts Inception v3;
    --out keeps everything."""
    import torch

    from histofast.models import InceptionV3

    weights = tmp_path / "inception_v3.pth"
    torch.save(InceptionV3(num_classes=1000, aux_logits=True).state_dict(), weights)
    kept = tmp_path / "kept"
    out = run_example(tmp_path, "paper_chain.py", "--quick", "--weights", os.fspath(weights), "--out", os.fspath(kept))
    assert "--pretrained" in out and "random initialisation" not in out
    assert table_row(out, "inception_v3")[1] == "--weights"
    assert table_row(out, "simple_cnn")[1] == "random"
    for model in ("simple_cnn", "inception_v3"):
        assert (kept / "runs" / model / "best.pt").is_file()
        assert (kept / "runs" / model / "test" / "metrics.json").is_file()
    assert f"kept in {kept}" in out


def test_two_level(tmp_path):
    out = run_example(tmp_path, "two_level.py", "--quick", "--backend", "torch")
    assert "epoch  1 (patch stage)" in out and "epoch  2 (image stage)" in out
    assert "Result: 4 classes, 12 training / 4 test regions" in out
    row = table_row(out, "TwoLevelCNN")
    assert row[2] == "1 + 1" and row[4] == "4"  # epochs, test images
    assert 0 <= float(row[5]) <= 1  # per-image accuracy
    assert "temporary folder removed" in out


def test_train_small_leaves_nothing(tmp_path):
    out = run_example(tmp_path, "train_small.py", "--epochs", "1", "--backend", "torch")
    assert "epoch 0 step   0" in out
