"""tile_grid / TileGrid / iter_tiles against the paper's recipe on OpenSlide's pixels (cv2.cvtColor →
cv2.inRange → mean per tile), numpy crops, Augment.apply on a whole level read at once, and tracemalloc."""
from __future__ import annotations

import csv
import math
import tracemalloc

import cv2
import numpy as np
import openslide
import pytest
from common import TWIN_ANGLE_ATOL, TWIN_ATOL

import histofast
import histofast.io.bands as bands
from histofast import Augment, HistofastError, SlideError, iter_tiles, tile_grid
from histofast.tiling import CSV_FIELDS, TileGrid

DEFAULT_LOWER, DEFAULT_UPPER = (0, 0, 200), (180, 30, 255)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUGMENT = Augment(rot90=True, flip=True, max_shift=20, max_angle=15, seed=5)

# Level-0 sizes are multiples of 4 (so level 1 is exactly ×4 and OpenSlide's reads of it are exact) and of
# no tile size or stride used here; min_level_size=128 keeps a level 1.
SLIDES = {
    "half": (2300, 2100, 3, 0.5),
    "none": (1700, 1300, 11, 0.0),
    "full": (1300, 1100, 12, 1.0),
    "sparse": (1900, 1500, 13, 0.3),
}
GRIDS = [(512, 512), (512, 256), (256, 100), (300, 77), (200, 350)]  # (tile_size, stride); the last: stride > tile


@pytest.fixture(scope="module")
def slides(make_slide):
    return {name: make_slide(w, h, seed, fraction, min_level_size=128)
            for name, (w, h, seed, fraction) in SLIDES.items()}


@pytest.fixture(scope="module")
def hsv_level(openslide_level):
    """``hsv_level(path, level)``: cv2's HSV of the whole level read by OpenSlide; cached."""
    cache: dict = {}

    def get(path, level):
        if (path, level) not in cache:
            cache[(path, level)] = cv2.cvtColor(np.ascontiguousarray(openslide_level(path, level)), cv2.COLOR_RGB2HSV)
        return cache[(path, level)]

    return get


def recipe(hsv: np.ndarray, tile: int, stride: int, lower=DEFAULT_LOWER, upper=DEFAULT_UPPER) -> np.ndarray:
    """The paper's white fraction of every whole tile (origin (0, 0)): float32 (rows, cols)."""
    white = cv2.inRange(hsv, np.array(lower, np.uint8), np.array(upper, np.uint8)) > 0
    rows, cols = (hsv.shape[0] - tile) // stride + 1, (hsv.shape[1] - tile) // stride + 1
    out = np.empty((rows, cols), np.float32)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = white[i * stride : i * stride + tile, j * stride : j * stride + tile].mean()
    return out


def tile_recipe(tile_rgb: np.ndarray, lower=DEFAULT_LOWER, upper=DEFAULT_UPPER) -> float:
    """The recipe on one tile, literally."""
    hsv = cv2.cvtColor(np.ascontiguousarray(tile_rgb), cv2.COLOR_RGB2HSV)
    return float((cv2.inRange(hsv, np.array(lower, np.uint8), np.array(upper, np.uint8)) > 0).mean())


@pytest.fixture(params=["default", "small"], ids=["chunk-default", "chunk-1B"])
def chunk(request, monkeypatch):
    """CHUNK_BYTES as shipped, or 1 byte: every chunk one stored-tile row high (one view row when resampled)."""
    if request.param == "small":
        monkeypatch.setattr(bands, "CHUNK_BYTES", 1)
    return request.param


# ---------------------------------------------------------------- the key test: keep == recipe on OpenSlide's tiles


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("tile,stride", GRIDS)
@pytest.mark.parametrize("name", list(SLIDES))
def test_white_ratio_and_keep_equal_the_recipe_on_openslide_tiles(slides, hsv_level, openslide_level, name, tile,
                                                                   stride, level, chunk):
    path = slides[name]
    with openslide.OpenSlide(path) as osr:
        width, height = osr.level_dimensions[level]
        ds = osr.level_downsamples[level]
        if tile > min(width, height):
            with pytest.raises(SlideError, match="smaller than one tile"):
                tile_grid(path, tile, stride, level=level)
            return
        grid = tile_grid(path, tile, stride, level=level)
        expected = recipe(hsv_level(path, level), tile, stride)
        assert grid.white_ratio.dtype == np.float32
        assert grid.shape == ((height - tile) // stride + 1, (width - tile) // stride + 1) == expected.shape
        np.testing.assert_array_equal(grid.white_ratio, expected)
        np.testing.assert_array_equal(grid.keep, expected <= 0.5)
        # The whole-level read stands for reading each tile with OpenSlide: check that on a few tiles, literally.
        rng = np.random.default_rng(tile * 7 + stride)
        for i, j in zip(rng.integers(0, grid.shape[0], 4), rng.integers(0, grid.shape[1], 4)):
            x, y = int(j) * stride, int(i) * stride
            rgba = np.asarray(osr.read_region((int(x * ds), int(y * ds)), level, (tile, tile)))
            assert (rgba[..., 3] == 255).all()
            ratio = tile_recipe(rgba[..., :3])
            assert grid.white_ratio[i, j] == np.float32(ratio)
            assert grid.keep[i, j] == (ratio <= 0.5)


BOUNDS = [
    (DEFAULT_LOWER, DEFAULT_UPPER),
    ((120, 40, 50), (170, 255, 255)),  # purple-ish: nuclei
    ((0, 0, 0), (180, 255, 255)),  # everything
    ((0, 0, 0), (0, 0, 0)),  # only black: nothing here
    ((150, 20, 180), (180, 120, 255)),  # pink stroma
]


@pytest.mark.parametrize("lower,upper", BOUNDS)
def test_other_hsv_bounds_and_thresholds(slides, hsv_level, lower, upper):
    path = slides["half"]
    grid = tile_grid(path, 256, 200, hsv_lower=lower, hsv_upper=upper)
    expected = recipe(hsv_level(path, 0), 256, 200, lower, upper)
    np.testing.assert_array_equal(grid.white_ratio, expected)
    for max_white in (0, 0.3, 1, 0.5):
        g = tile_grid(path, 256, 200, hsv_lower=lower, hsv_upper=upper, max_white=max_white)
        np.testing.assert_array_equal(g.white_ratio, expected)
        np.testing.assert_array_equal(g.keep, expected <= max_white)
        assert len(g) == int((expected <= max_white).sum())
    if (lower, upper) == ((0, 0, 0), (180, 255, 255)):
        assert (expected == 1).all()
    if (lower, upper) == ((0, 0, 0), (0, 0, 0)):
        assert (expected == 0).all()


# ---------------------------------------------------------------- coordinates


@pytest.mark.parametrize("request_, downsample", [
    (dict(level=0), 1.0), (dict(level=1), 4.0), (dict(mpp=0.5), 2.0), (dict(mpp=0.3), 1.2),
])
def test_coordinates(slides, request_, downsample):
    grid = tile_grid(slides["half"], 128, 96, **request_)
    assert grid.downsample == pytest.approx(downsample)
    keep = grid.keep
    assert len(grid) == int(keep.sum()) > 0
    rows, cols = np.nonzero(keep)  # row-major
    np.testing.assert_array_equal(grid.grid_coords, np.stack([cols, rows], 1) * 96)
    assert grid.grid_coords.dtype == grid.coords.dtype == np.int64
    order = np.lexsort((grid.grid_coords[:, 0], grid.grid_coords[:, 1]))
    np.testing.assert_array_equal(order, np.arange(len(grid)))
    if downsample.is_integer():
        np.testing.assert_array_equal(grid.coords, grid.grid_coords * int(downsample))
    else:
        np.testing.assert_array_equal(grid.coords, np.floor(grid.grid_coords * downsample + 0.5).astype(np.int64))
    assert grid.mpp == pytest.approx(0.25 * downsample)


# ---------------------------------------------------------------- tiles: iter_tiles and TileGrid.tiles


def _collect(batches, batch_size: int):
    batches = list(batches)
    assert batches, "no batch"
    assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
    cat = {name: np.concatenate([getattr(b, name) for b in batches])
           for name in ("coords", "grid_coords", "white_ratio", "index")}
    cat["images"] = np.concatenate([np.asarray(b.images) for b in batches])
    for b in batches:
        assert len(b.images) == len(b.coords) == len(b.grid_coords) == len(b.white_ratio) == len(b.index)
    return batches, cat


@pytest.fixture(scope="module")
def cut_reference(slides):
    """``cut_reference(level, tile, stride, augmented) -> (grid, options, expected)``: the grid, the
    iter_tiles options, and the tiles cut from the whole level read at once (numpy crops, or
    Augment.apply); cached across batch sizes and chunkings."""
    cache: dict = {}

    def get(level, tile, stride, augmented):
        key = (level, tile, stride, augmented)
        if key not in cache:
            path = slides["half"]
            grid = tile_grid(path, tile, stride, level=level)
            with histofast.open_slide(path) as slide:
                region = slide.read_level_region(level, (0, 0), slide.level_dimensions[level])
            origins = grid.grid_coords
            if augmented:
                options = dict(augment=AUGMENT, epoch=3, out_dtype="float32", layout="NCHW", mean=MEAN, std=STD)
                expected = AUGMENT.apply(region, origins, tile, epoch=3, start=0, mean=MEAN, std=STD,
                                         out_dtype="float32", layout="NCHW")
                assert expected.shape == (len(grid), 3, tile, tile) and expected.dtype == np.float32
            else:
                options = {}  # uint8 NHWC, the plain tiles
                expected = np.stack([region[y : y + tile, x : x + tile] for x, y in origins])
            cache[key] = grid, options, expected
        return cache[key]

    return get


@pytest.mark.parametrize("augmented", [False, True], ids=["plain", "augmented"])
@pytest.mark.parametrize("level,tile,stride,batch_size", [
    (0, 256, 200, 7), (0, 256, 200, 64),  # 52 kept tiles
    (1, 128, 96, 1), (1, 128, 96, 7), (1, 128, 96, 64),  # 12 kept tiles (batch_size=1 at level 0 costs seconds)
])
def test_iter_tiles_and_grid_tiles_cut_the_whole_level_read_at_once(slides, cut_reference, level, tile, stride,
                                                                    batch_size, augmented, chunk):
    path = slides["half"]
    grid, options, expected = cut_reference(level, tile, stride, augmented)
    n = len(grid)
    assert n > batch_size or batch_size == 64
    with histofast.open_slide(path) as slide:
        stream = iter_tiles(path, tile, stride, level=level, batch_size=batch_size, **options)
        batches, got = _collect(stream, batch_size)
        from_grid = _collect(grid.tiles(slide, batch_size=batch_size, **options), batch_size)[1]

    for result in (got, from_grid):
        assert result["images"].dtype == expected.dtype and result["images"].shape == expected.shape
        np.testing.assert_array_equal(result["images"], expected)
        np.testing.assert_array_equal(result["index"], np.arange(n))
        np.testing.assert_array_equal(result["coords"], grid.coords)
        np.testing.assert_array_equal(result["grid_coords"], grid.grid_coords)
        np.testing.assert_array_equal(result["white_ratio"], grid.white_ratio[grid.keep])
    assert len(batches) == math.ceil(n / batch_size) and len(batches[-1]) == n - batch_size * (len(batches) - 1)
    np.testing.assert_array_equal(stream.grid.white_ratio, grid.white_ratio)
    np.testing.assert_array_equal(stream.grid.keep, grid.keep)
    assert (stream.grid.level, stream.grid.tile_size, stream.grid.stride) == (level, tile, stride)


def test_zero_tissue_keeps_nothing_and_full_tissue_keeps_everything(slides):
    empty = tile_grid(slides["none"], 256, 128)
    assert len(empty) == 0 and empty.coords.shape == (0, 2) and (empty.white_ratio > 0.5).all()
    stream = iter_tiles(slides["none"], 256, 128, batch_size=7)
    assert list(stream) == []
    np.testing.assert_array_equal(stream.grid.white_ratio, empty.white_ratio)
    assert list(empty.tiles()) == []

    full = tile_grid(slides["full"], 256, 128)
    assert full.keep.all() and len(full) == full.white_ratio.size
    assert sum(len(b) for b in iter_tiles(slides["full"], 256, 128)) == full.white_ratio.size


def test_batches_are_recycled_only_once_released(slides):
    kept = list(iter_tiles(slides["full"], 128, 64, batch_size=5))  # every batch held: none recycled
    assert len({id(b.images) for b in kept}) == len(kept) > 3
    seen, views = set(), []
    for k, batch in enumerate(iter_tiles(slides["full"], 128, 64, batch_size=5)):
        np.testing.assert_array_equal(batch.images, kept[k].images)
        seen.add(id(batch.images))
        if k == 1:
            views.append(batch.images[:1])  # a view keeps its batch from being reused
    assert len(seen) < len(kept)  # released batches were written again
    np.testing.assert_array_equal(views[0], kept[1].images[:1])


def test_iter_tiles_grid_equals_tile_grid_at_a_resampled_view(slides):
    reference = tile_grid(slides["half"], 128, 100, mpp=0.5)
    stream = iter_tiles(slides["half"], 128, 100, mpp=0.5)
    assert sum(len(b) for b in stream) == len(reference)
    np.testing.assert_array_equal(stream.grid.white_ratio, reference.white_ratio)
    assert stream.grid.scale == reference.scale == pytest.approx(2.0)


@pytest.mark.parametrize("mpp", [0.5, 0.3])
def test_resampled_grid_does_not_depend_on_chunking(make_slide, monkeypatch, mpp):
    path = make_slide(3000, 2200, seed=1, tissue_fraction=0.5, min_level_size=128)
    reference = tile_grid(path, 128, 100, mpp=mpp)
    monkeypatch.setattr(bands, "CHUNK_BYTES", 200_000)  # ~40 view rows per chunk (1 byte: minutes here)
    np.testing.assert_array_equal(tile_grid(path, 128, 100, mpp=mpp).white_ratio, reference.white_ratio)


# ---------------------------------------------------------------- CSV, with_max_white


@pytest.mark.parametrize("request_", [dict(level=1), dict(mpp=0.3), dict(level=0)], ids=["level1", "mpp", "png"])
def test_csv_round_trip(slides, tmp_path, request_):
    if request_ == dict(level=0):  # a plain image: no mpp
        from PIL import Image

        with histofast.open_slide(slides["half"]) as s:
            path = tmp_path / "region.png"
            Image.fromarray(s.read_level_region(0, (0, 0), (700, 500))).save(path)
        grid = tile_grid(path, 100, 60, max_white=0.3)
        assert grid.mpp is None
    else:
        grid = tile_grid(slides["half"], 128, 96, max_white=0.3, **request_)
    out = tmp_path / "grid.csv"
    grid.to_csv(out)
    back = TileGrid.from_csv(out)
    for field in ("slide_path", "level", "tile_size", "stride", "max_white", "downsample", "scale", "mpp"):
        assert getattr(back, field) == getattr(grid, field), field
    assert back.white_ratio.dtype == np.float32
    np.testing.assert_array_equal(back.white_ratio, grid.white_ratio)
    np.testing.assert_array_equal(back.coords, grid.coords)
    np.testing.assert_array_equal(back.grid_coords, grid.grid_coords)

    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_FIELDS
        records = list(reader)
    assert len(records) == grid.white_ratio.size
    kept = [(int(r["x"]), int(r["y"])) for r in records if r["keep"] == "1"]
    assert kept == [tuple(c) for c in grid.coords.tolist()]
    ratio = np.array([np.float32(r["white_ratio"]) for r in records], np.float32).reshape(grid.shape)
    np.testing.assert_array_equal(ratio, grid.white_ratio)
    assert all(r["slide"] == grid.slide_path for r in records)


def test_with_max_white(slides):
    grid = tile_grid(slides["half"], 256, 200)
    stricter = grid.with_max_white(0.2)
    assert stricter.max_white == 0.2 and grid.max_white == 0.5
    assert stricter.white_ratio is grid.white_ratio
    np.testing.assert_array_equal(stricter.keep, grid.white_ratio <= 0.2)
    assert len(stricter) <= len(grid)
    np.testing.assert_array_equal(grid.with_max_white(1).keep, np.ones(grid.shape, bool))
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(HistofastError, match="max_white=.*must be a fraction in"):
            grid.with_max_white(bad)


# ---------------------------------------------------------------- memory


def _peak_while(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded(make_slide, monkeypatch):
    """A tall 3000×12000 slide (103 MiB decoded) with CHUNK_BYTES = 2 MiB: numpy's allocations (traced by
    tracemalloc) peak well below the level. A wide slide is the wrong probe at this size: the band buffers
    hold a few tile rows of the full width, which for a 12000×3000 level is most of its 3000 rows."""
    path = make_slide(3000, 12000, seed=5, tissue_fraction=0.5)
    monkeypatch.setattr(bands, "CHUNK_BYTES", 2 << 20)
    with histofast.open_slide(path) as slide:
        level_bytes = 3000 * 12000 * 3
        grids = []
        peak = _peak_while(lambda: grids.append(tile_grid(slide, 512)))
        print(f"tile_grid peak {peak / 2**20:.1f} MiB = {peak / level_bytes:.1%} of the decoded level")
        assert peak < 0.3 * level_bytes
        assert len(grids[0]) > 0
        peak = _peak_while(lambda: sum(len(b) for b in iter_tiles(slide, 512, batch_size=8)))
        print(f"iter_tiles peak {peak / 2**20:.1f} MiB = {peak / level_bytes:.1%} of the decoded level")
        assert peak < 0.35 * level_bytes


def test_a_level_smaller_than_one_chunk_costs_about_itself(make_slide):
    path = make_slide(12000, 3000, seed=5, tissue_fraction=0.5)
    with histofast.open_slide(path) as slide:
        level_bytes = 12000 * 3000 * 3
        peak = _peak_while(lambda: tile_grid(slide, 512))
    assert peak < 1.5 * level_bytes, f"peak {peak / 2**20:.0f} MiB for a {level_bytes / 2**20:.0f} MiB level"


# ---------------------------------------------------------------- bad input

BAD = [
    (dict(tile_size=0), HistofastError, "tile_size=0: must be a positive integer"),
    (dict(tile_size=-1), HistofastError, "tile_size=-1: must be a positive integer"),
    (dict(tile_size=1.5), HistofastError, "tile_size=1.5: must be a positive integer"),
    (dict(tile_size=256, stride=0), HistofastError, "stride=0: must be a positive integer"),
    (dict(max_white=-0.1), HistofastError, r"max_white=-0.1: must be a fraction in \[0, 1\]"),
    (dict(max_white=1.5), HistofastError, r"max_white=1.5: must be a fraction in \[0, 1\]"),
    (dict(hsv_lower=(0, 0, 256)), HistofastError, r"lower\[2\]=256: V must lie in \[0, 255\]"),
    (dict(hsv_upper=(181, 30, 255)), HistofastError, r"upper\[0\]=181: H must lie in \[0, 180\]"),
    (dict(hsv_lower=(10, 0, 200), hsv_upper=(5, 30, 255)), HistofastError, r"lower\[0\]=10 exceeds upper\[0\]=5"),
    (dict(hsv_lower=(0, 0)), HistofastError, "expected 3 values"),
    (dict(level=9), HistofastError, "level=9: .* has levels 0: 2300×2100, 1: 575×525"),
    (dict(level=-1), HistofastError, "level=-1"),
    (dict(level=0, mpp=0.5), HistofastError, "level and mpp: give at most one"),
    (dict(mpp=0.1), HistofastError, "finer than the slide's level 0"),
    (dict(tile_size=4000), SlideError, r"\.svs: level 0 is 2300×2100 pixels, smaller than one tile \(tile_size=4000\)"),
    (dict(level=2, tile_size=200), SlideError, r"level 2 is 143×131 pixels, smaller than one tile"),
    (dict(device="tpu"), HistofastError, "device='tpu': expected 'cpu', 'cuda' or 'cuda:<index>'"),
]


@pytest.mark.parametrize("kwargs,error,fragment", BAD)
def test_bad_grid_arguments(slides, kwargs, error, fragment):
    kwargs = {"tile_size": 512, **kwargs}
    with pytest.raises(error, match=fragment):
        tile_grid(slides["half"], **kwargs)
    with pytest.raises(error, match=fragment):  # checked at the call, before any batch is drawn
        iter_tiles(slides["half"], **kwargs)


def test_slide_smaller_than_one_tile_names_the_file(make_slide):
    path = make_slide(600, 400, seed=1, tissue_fraction=0.5)
    with pytest.raises(SlideError, match="smaller than one tile") as info:
        tile_grid(path, 512)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_cuda_without_a_gpu_is_a_clear_error(slides):
    if histofast.cuda_available():
        pytest.skip("a CUDA device is present")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(HistofastError, match=f"device='{device}': no CUDA device is available"):
            tile_grid(slides["half"], 512, device=device)
        with pytest.raises(HistofastError, match="no CUDA device is available"):
            iter_tiles(slides["half"], 512, device=device)


def test_bad_batch_options(slides):
    with pytest.raises(HistofastError, match="batch_size=0: must be a positive integer"):
        iter_tiles(slides["half"], 512, batch_size=0)
    with pytest.raises(HistofastError, match="batch_size=-3: must be a positive integer"):
        iter_tiles(slides["half"], 512, batch_size=-3)
    with pytest.raises(TypeError, match="augment: expected a histofast.Augment"):
        iter_tiles(slides["half"], 512, augment="rot90")
    grid = tile_grid(slides["half"], 512)
    with pytest.raises(HistofastError, match="batch_size=0: must be a positive integer"):
        next(grid.tiles(batch_size=0))
    with pytest.raises(HistofastError, match="layout='CHW'"):
        next(grid.tiles(layout="CHW"))


@pytest.mark.parametrize("option", [dict(layout="CHW"), dict(out_dtype="int8")])
def test_bad_cut_options_fail_at_the_call(slides, option):
    with pytest.raises(HistofastError, match=next(iter(option))):
        iter_tiles(slides["none"], 512, **option)


# ---------------------------------------------------------------- GPU twin


@pytest.mark.gpu
def test_cuda_grid_and_tiles_equal_cpu(slides):
    import torch

    path = slides["half"]
    for level, tile, stride in [(0, 256, 200), (1, 128, 96)]:
        cpu = tile_grid(path, tile, stride, level=level)
        gpu = tile_grid(path, tile, stride, level=level, device="cuda")
        np.testing.assert_array_equal(gpu.white_ratio, cpu.white_ratio)
        for options, atol in [({}, TWIN_ATOL["uint8"]),
                              (dict(augment=AUGMENT, epoch=1, out_dtype="float32", layout="NCHW", mean=MEAN, std=STD),
                               TWIN_ANGLE_ATOL["float32"])]:
            cpu_batches = list(iter_tiles(path, tile, stride, level=level, batch_size=7, **options))
            stream = iter_tiles(path, tile, stride, level=level, batch_size=7, device="cuda", **options)
            gpu_batches = list(stream)
            assert len(gpu_batches) == len(cpu_batches) > 0
            for c, g in zip(cpu_batches, gpu_batches):
                assert isinstance(g.images, torch.Tensor) and g.images.is_cuda
                np.testing.assert_allclose(g.images.cpu().numpy(), c.images, rtol=0, atol=atol)
                np.testing.assert_array_equal(g.coords, c.coords)
                np.testing.assert_array_equal(g.index, c.index)
            np.testing.assert_array_equal(stream.grid.white_ratio, cpu.white_ratio)


def test_band_buffers_beyond_the_limit_are_refused_by_name(make_slide, monkeypatch):
    """Issue 15, item 10: tall stored tiles on a very wide level once asked for 11.4 GB and the MemoryError
    escaped every API; the band memory is checked before anything is allocated (the limit scaled down here)."""
    path = make_slide(2048, 2048, seed=5)
    monkeypatch.setattr(bands, "BAND_MEMORY_LIMIT", 1 << 20)
    with pytest.raises(histofast.SlideError, match=r"level 0 \(2048×2048 pixels, stored tiles 256 rows tall\) needs "
                                                   r"0\.\d GiB of band buffers .* limit; tile a coarser level"):
        list(iter_tiles(path, 512))
    assert tile_grid(path, 512).shape == (4, 4)  # tile_grid keeps no bands on the CPU: a scratch tile per thread
