"""histofast.train.config: TrainConfig from flags, YAML and JSON files (the same keys), with value types and errors."""
from __future__ import annotations

import json

import pytest

from histofast import HistofastError


def test_config_files_and_flags_agree(tmp_path):
    import argparse

    from histofast.train.config import add_arguments, from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = from_arguments(parser.parse_args(
        ["d.csv", "--model", "simple_cnn", "--batch-size", "8", "--mean", "0.5", "0.5", "0.5", "--no-channels-last",
         "--lr-steps", "3", "6", "--optimizer", "sgd"]))
    (tmp_path / "c.yaml").write_text("data: d.csv\nmodel: simple_cnn\nbatch-size: 8\nmean: [0.5, 0.5, 0.5]\n"
                                     "channels_last: false\nlr_steps: [3, 6]\noptimizer: sgd\n")
    (tmp_path / "c.json").write_text(json.dumps(flags.to_dict()))
    for name in ("c.yaml", "c.json"):
        assert from_arguments(parser.parse_args(["--config", str(tmp_path / name)])) == flags
    override = from_arguments(parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--batch-size", "2"]))
    assert override.batch_size == 2 and override.model == "simple_cnn"
    (tmp_path / "floats.yaml").write_text("data: d.csv\nlr: 1e-3\nweight_decay: 1e-4\nepochs: '3'\n")
    floats = from_arguments(parser.parse_args(["--config", str(tmp_path / "floats.yaml")]))
    assert (floats.lr, floats.weight_decay, floats.epochs) == (1e-3, 1e-4, 3)  # YAML reads 1e-3 as a string
    (tmp_path / "wrong.yaml").write_text("data: d.csv\nlr: fast\n")
    with pytest.raises(HistofastError, match="lr='fast': expected a number"):
        from_arguments(parser.parse_args(["--config", str(tmp_path / "wrong.yaml")]))
    (tmp_path / "bad.yaml").write_text("data: d.csv\nbatchsize: 8\n")
    with pytest.raises(HistofastError, match="bad.yaml: unknown keys batchsize"):
        from_arguments(parser.parse_args(["--config", str(tmp_path / "bad.yaml")]))


def test_baseline_settings_are_refused_for_the_two_level_model():
    from histofast.train.config import TrainConfig

    with pytest.raises(HistofastError, match="input_size, aux_logits: not used by two_level_cnn"):
        TrainConfig(data="d.csv", input_size=299, aux_logits=True)
    assert TrainConfig(data="d.csv", model="inception_v3", input_size=299, aux_logits=True).input_size == 299
