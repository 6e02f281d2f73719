"""GridSpec and BatchFormat: each setting checked once with the message users saw before, defaults in one place,
and the flat keywords of 0.x still working for one release through the one adapter (with a FutureWarning)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import histofast as hf
from histofast.export import ExportOptions
from histofast.specs import BatchFormat, GridSpec, from_keywords


def test_grid_spec_normalises_and_defaults_the_stride_to_the_tile_size():
    spec = GridSpec(np.int64(256), hsv_lower=[0, 0, 190], max_white=1)
    assert (spec.tile_size, spec.stride, spec.hsv_lower, spec.max_white) == (256, 256, (0, 0, 190), 1.0)
    assert type(spec.tile_size) is int and type(spec.max_white) is float
    assert GridSpec(256, 128).stride == 128 and GridSpec().stride == GridSpec().tile_size == 512
    assert hash(spec) == hash(GridSpec(256, 256, hsv_lower=(0, 0, 190), max_white=1.0)) and spec == GridSpec(
        256, hsv_lower=(0, 0, 190), max_white=1.0)
    assert json.loads(json.dumps(spec.as_dict()))["hsv_lower"] == [0, 0, 190]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(tile_size=0), hf.HistofastError, r"tile_size=0: must be a positive integer \(pixels\)"),
    (dict(stride=1.5), hf.HistofastError, r"stride=1.5: must be a positive integer"),
    (dict(hsv_lower=(0, 0, 300)), hf.HistofastError, r"lower\[2\]=300: V must lie in \[0, 255\]"),
    (dict(hsv_lower=(10, 0, 0), hsv_upper=(5, 30, 255)), hf.HistofastError, r"lower\[0\]=10 exceeds upper\[0\]=5"),
    (dict(hsv_upper=(1, 2)), hf.HistofastError, "3 values"),
    (dict(max_white=2), hf.HistofastError, r"max_white=2: must be a fraction in \[0, 1\]"),
    (dict(level=1, mpp=0.5), hf.HistofastError, "give at most one of level=, mpp=, magnification="),
    (dict(mpp=-1), hf.HistofastError, r"mpp=-1: must be a positive number"),
    (dict(level=-1), hf.HistofastError, "level=-1: must be a non-negative integer"),
])
def test_grid_spec_names_the_first_bad_setting(kwargs, error, match):
    with pytest.raises(error, match=match):
        GridSpec(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_size=0), hf.HistofastError, "batch_size=0"),
    (dict(augment="rot90"), TypeError, "augment: expected a histofast.Augment, None or 'preset', got str"),
    (dict(out_dtype="int8"), hf.HistofastError, "out_dtype='int8'"),
    (dict(layout="CHW"), hf.HistofastError, "layout='CHW'"),
    (dict(out_dtype="uint8", mean=(0.5, 0.5, 0.5)), hf.HistofastError, "uint8 output is never normalised"),
    (dict(std=(1.0, 0.0, 1.0)), hf.HistofastError, r"std\[1\]"),
    (dict(mean=(0.0, float("nan"), 0.0)), hf.HistofastError, r"mean\[1\]"),
])
def test_batch_format_names_the_first_bad_setting(kwargs, error, match):
    with pytest.raises(error, match=match):
        BatchFormat(**kwargs)


def test_the_kernel_and_the_specs_share_their_defaults():
    """One place for each default: the entry points' signatures read GridSpec's, the format ops.augment's."""
    import inspect

    for fn in (hf.tile_grid, hf.iter_tiles):
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in GridSpec.__dataclass_fields__} == dataclasses.asdict(GridSpec(
            stride=None)) | {"stride": None}
    params = inspect.signature(hf.ops.augment).parameters
    fmt = BatchFormat()
    assert (params["out_dtype"].default, params["layout"].default) == (fmt.out_dtype, fmt.layout)
    assert tuple(params["mean"].default) == fmt.mean and tuple(params["std"].default) == fmt.std


def test_the_adapter_turns_the_flat_keywords_into_specs_with_a_warning():
    with pytest.warns(FutureWarning, match=r"TileDataset\(tile_size, stride, max_white, batch_size, out_dtype=…\)"):
        grid, batch, rest = from_keywords("TileDataset", None, None, (256, 128),
                                          {"max_white": 0.3, "batch_size": 8, "dtype": "float16", "seed": 1})
    assert grid == GridSpec(256, 128, max_white=0.3) and batch == BatchFormat(8, out_dtype="float16")
    assert rest == {"seed": 1}
    with pytest.raises(TypeError, match="tile_size given with grid="):
        from_keywords("TileDataset", GridSpec(), None, (), {"tile_size": 256})
    with pytest.raises(TypeError, match="at most 2 positional"):
        from_keywords("TileDataset", None, None, (1, 2, 3), {})
    with pytest.raises(TypeError, match="grid: expected a histofast.GridSpec, got dict"):
        from_keywords("TileDataset", {"tile_size": 256}, None, (), {})


def test_tile_dataset_takes_specs_and_its_0x_keywords_give_the_same_samples(make_slide):
    slide = make_slide(1024, 768)
    new = hf.TileDataset([slide], grid=GridSpec(128, 96, max_white=0.9),
                         batch=BatchFormat(16, hf.Augment(max_shift=4, seed=2)), lanes=2, progress=False)
    with pytest.warns(FutureWarning) as caught:
        old = hf.TileDataset([slide], 128, 96, max_white=0.9, batch_size=16, augment=hf.Augment(max_shift=4, seed=2),
                             workers=2, progress=False)
    assert {"tile_size", "workers"} <= {w for c in caught for w in ("tile_size", "workers") if w in str(c.message)}
    assert old.grid == new.grid and old.batch == new.batch and old.num_lanes == new.num_lanes == 2
    a, b = list(new), list(old)
    assert len(a) == len(b) > 0 and all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    with pytest.warns(FutureWarning, match="renamed num_lanes"):
        assert old.workers == 2


def test_the_preset_decides_the_augmentation_unless_the_format_says(make_slide):
    slide = make_slide(1024, 768)
    train = hf.TileDataset([slide], grid=GridSpec(128), batch=BatchFormat(8), seed=3, progress=False)
    assert train.batch.augment == hf.Augment(rot90=True, flip=True, max_shift=16, seed=3)
    assert hf.TileDataset([slide], grid=GridSpec(128), batch=BatchFormat(8), preset="eval",
                          progress=False).batch.augment is None
    assert hf.TileDataset([slide], grid=GridSpec(128), batch=BatchFormat(8, augment=None),
                          progress=False).batch.augment is None
    batch = next(iter(hf.iter_tiles(slide, 128, max_white=0.9, batch_size=4)))  # no preset there: plain tiles
    assert batch.images.dtype == np.uint8 and batch.images.shape == (4, 128, 128, 3)


def test_the_stride_default_change_is_said_where_0x_had_256(make_slide):
    with pytest.warns(FutureWarning, match=r"stride now defaults to the tile size \(128 pixels; it was 256\)"):
        ds = hf.TileDataset([make_slide(1024, 768)], 128, max_white=0.9, progress=False)
    assert ds.grid.stride == 128


def test_mode_images_of_0x_is_image_size(make_slide):
    with pytest.warns(FutureWarning, match="mode="):
        ds = hf.TileDataset([make_slide(1024, 768)], grid=GridSpec(64), mode="images", image_size=128, progress=False)
    assert ds.samples.mode == "images" and ds.samples.sample_shape == (4, 3, 64, 64)


def test_renamed_attributes_still_read_with_a_warning(make_slide):
    grid = hf.tile_grid(make_slide(1024, 768), 128, max_white=0.9)
    with pytest.warns(FutureWarning, match="TileGrid.level_coords: renamed grid_coords"):
        np.testing.assert_array_equal(grid.level_coords, grid.grid_coords)
    batch = next(iter(grid.tiles()))
    with pytest.warns(FutureWarning, match="TileBatch.level_coords: renamed grid_coords"):
        np.testing.assert_array_equal(batch.level_coords, batch.grid_coords)


def test_export_options_hold_a_grid_and_read_0x_settings():
    options = ExportOptions(grid=GridSpec(256, max_white=0.4), format="png")
    with pytest.warns(FutureWarning):
        assert ExportOptions(256, max_white=0.4, format="png") == options
    key = options.key()
    assert key["stride"] is None and key["tile_size"] == 256 and key["format"] == "png"
    assert ExportOptions.recorded({**key, "stride": 256}) == key  # 0.x wrote a given stride as a number
    older = {k: v for k, v in key.items() if k != "skip_background"}  # before the setting existed
    assert ExportOptions.recorded(older) == key
    with pytest.raises(TypeError, match="unexpected keyword arguments: batch_size"):
        ExportOptions(batch_size=4)


def test_train_config_builds_its_grid_once_and_reads_0x_workers():
    from histofast.train import TrainConfig

    config = TrainConfig(data="x.csv", tile_size=256, stride=128, mpp=0.5)
    assert config.grid == GridSpec(256, 128, mpp=0.5)
    with pytest.raises(hf.HistofastError, match="tile_size=0"):
        TrainConfig(data="x.csv", tile_size=0)
    with pytest.warns(FutureWarning, match="'workers' is renamed 'lanes'"):
        assert TrainConfig.from_dict({"data": "x.csv", "workers": 3}).lanes == 3
    assert TrainConfig.from_dict({"data": "x.csv", "workers": 3}, "checkpoint a.pt").lanes == 3  # old checkpoints
