"""CLAM's tissue segmentation as a tissue rule (GridSpec(tissue="otsu")): the contours and every keep decision equal
those of CLAM's own code, reproduced below from its source, on OpenSlide's pixels; the default rule is untouched; the
rule travels through every entry point (tile_grid, iter_tiles, TileDataset, TrainConfig, histofast tile, settings.json,
grid.csv, the QC image)."""
from __future__ import annotations

import csv
import functools
import json

import numpy as np
import pytest

import histofast as hf
from histofast.specs import BatchFormat, GridSpec
from histofast.tiling import scan, tissue

cv2 = pytest.importorskip("cv2")
openslide = pytest.importorskip("openslide")


# --- CLAM @ 53e2409d4a8189c682c173382964a85f114f923c, reproduced ---------------------------------------------------
# wsi_core/util_classes.py: isInContourV3_Easy, verbatim.
class Contour_Checking_fn(object):
    # Defining __call__ method
    def __call__(self, pt):
        raise NotImplementedError


class isInContourV3_Easy(Contour_Checking_fn):
    def __init__(self, contour, patch_size, center_shift=0.5):
        self.cont = contour
        self.patch_size = patch_size
        self.shift = int(patch_size//2*center_shift)

    def __call__(self, pt):
        center = (pt[0]+self.patch_size//2, pt[1]+self.patch_size//2)
        if self.shift > 0:
            all_points = [(center[0]-self.shift, center[1]-self.shift),
                          (center[0]+self.shift, center[1]+self.shift),
                          (center[0]+self.shift, center[1]-self.shift),
                          (center[0]-self.shift, center[1]+self.shift)
                          ]
        else:
            all_points = [center]

        for points in all_points:
            if cv2.pointPolygonTest(self.cont, tuple(np.array(points).astype(float)), False) >= 0:
                return 1
        return 0


class WholeSlideImage(object):
    """wsi_core/WholeSlideImage.py: the methods segmentation and patching use, verbatim but for the prints, the
    multiprocessing pool of process_contour (its points are mapped in order) and the HDF5 writing."""

    def __init__(self, path):
        self.wsi = openslide.open_slide(str(path))
        self.level_downsamples = self._assertLevelDownsamples()
        self.level_dim = self.wsi.level_dimensions

        self.contours_tissue = None
        self.contours_tumor = None
        self.hdf5_file = None

    def segmentTissue(self, seg_level=0, sthresh=20, sthresh_up = 255, mthresh=7, close = 0, use_otsu=False,
                      filter_params={'a_t':100}, ref_patch_size=512, exclude_ids=[], keep_ids=[]):  # noqa: B006
        def _filter_contours(contours, hierarchy, filter_params):
            filtered = []

            # find indices of foreground contours (parent == -1)
            hierarchy_1 = np.flatnonzero(hierarchy[:,1] == -1)
            all_holes = []

            # loop through foreground contour indices
            for cont_idx in hierarchy_1:
                # actual contour
                cont = contours[cont_idx]
                # indices of holes contained in this contour (children of parent contour)
                holes = np.flatnonzero(hierarchy[:, 1] == cont_idx)
                # take contour area (includes holes)
                a = cv2.contourArea(cont)
                # calculate the contour area of each hole
                hole_areas = [cv2.contourArea(contours[hole_idx]) for hole_idx in holes]
                # actual area of foreground contour region
                a = a - np.array(hole_areas).sum()
                if a == 0: continue  # noqa: E701
                if tuple((filter_params['a_t'],)) < tuple((a,)):
                    filtered.append(cont_idx)
                    all_holes.append(holes)

            foreground_contours = [contours[cont_idx] for cont_idx in filtered]

            hole_contours = []

            for hole_ids in all_holes:
                unfiltered_holes = [contours[idx] for idx in hole_ids ]
                unfilered_holes = sorted(unfiltered_holes, key=cv2.contourArea, reverse=True)
                # take max_n_holes largest holes by area
                unfilered_holes = unfilered_holes[:filter_params['max_n_holes']]
                filtered_holes = []

                # filter these holes
                for hole in unfilered_holes:
                    if cv2.contourArea(hole) > filter_params['a_h']:
                        filtered_holes.append(hole)

                hole_contours.append(filtered_holes)

            return foreground_contours, hole_contours

        img = np.array(self.wsi.read_region((0,0), seg_level, self.level_dim[seg_level]))
        img_hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # Convert to HSV space
        img_med = cv2.medianBlur(img_hsv[:,:,1], mthresh)  # Apply median blurring

        # Thresholding
        if use_otsu:
            _, img_otsu = cv2.threshold(img_med, 0, sthresh_up, cv2.THRESH_OTSU+cv2.THRESH_BINARY)
        else:
            _, img_otsu = cv2.threshold(img_med, sthresh, sthresh_up, cv2.THRESH_BINARY)

        # Morphological closing
        if close > 0:
            kernel = np.ones((close, close), np.uint8)
            img_otsu = cv2.morphologyEx(img_otsu, cv2.MORPH_CLOSE, kernel)

        scale = self.level_downsamples[seg_level]
        scaled_ref_patch_area = int(ref_patch_size**2 / (scale[0] * scale[1]))
        filter_params = filter_params.copy()
        filter_params['a_t'] = filter_params['a_t'] * scaled_ref_patch_area
        filter_params['a_h'] = filter_params['a_h'] * scaled_ref_patch_area

        # Find and filter contours
        contours, hierarchy = cv2.findContours(img_otsu, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE) # Find contours
        hierarchy = np.squeeze(hierarchy, axis=(0,))[:, 2:]
        if filter_params: foreground_contours, hole_contours = _filter_contours(contours, hierarchy, filter_params)  # noqa: E501,E701

        self.contours_tissue = self.scaleContourDim(foreground_contours, scale)
        self.holes_tissue = self.scaleHolesDim(hole_contours, scale)

        #exclude_ids = [0,7,9]
        if len(keep_ids) > 0:
            contour_ids = set(keep_ids) - set(exclude_ids)
        else:
            contour_ids = set(np.arange(len(self.contours_tissue))) - set(exclude_ids)

        self.contours_tissue = [self.contours_tissue[i] for i in contour_ids]
        self.holes_tissue = [self.holes_tissue[i] for i in contour_ids]

    @staticmethod
    def isInHoles(holes, pt, patch_size):
        for hole in holes:
            if cv2.pointPolygonTest(hole, (pt[0]+patch_size/2, pt[1]+patch_size/2), False) > 0:
                return 1

        return 0

    @staticmethod
    def isInContours(cont_check_fn, pt, holes=None, patch_size=256):
        if cont_check_fn(pt):
            if holes is not None:
                return not WholeSlideImage.isInHoles(holes, pt, patch_size)
            else:
                return 1
        return 0

    @staticmethod
    def scaleContourDim(contours, scale):
        return [np.array(cont * scale, dtype='int32') for cont in contours]

    @staticmethod
    def scaleHolesDim(contours, scale):
        return [[np.array(hole * scale, dtype = 'int32') for hole in holes] for holes in contours]

    def _assertLevelDownsamples(self):
        level_downsamples = []
        dim_0 = self.wsi.level_dimensions[0]

        for downsample, dim in zip(self.wsi.level_downsamples, self.wsi.level_dimensions):
            estimated_downsample = (dim_0[0]/float(dim[0]), dim_0[1]/float(dim[1]))
            level_downsamples.append(estimated_downsample) if estimated_downsample != (downsample, downsample) else level_downsamples.append((downsample, downsample))  # noqa: E501

        return level_downsamples

    def process_contour(self, cont, contour_holes, patch_level, save_path, patch_size = 256, step_size = 256,
                        contour_fn='four_pt', use_padding=True, top_left=None, bot_right=None):
        start_x, start_y, w, h = cv2.boundingRect(cont) if cont is not None else (0, 0, self.level_dim[patch_level][0], self.level_dim[patch_level][1])  # noqa: E501

        patch_downsample = (int(self.level_downsamples[patch_level][0]), int(self.level_downsamples[patch_level][1]))
        ref_patch_size = (patch_size*patch_downsample[0], patch_size*patch_downsample[1])

        img_w, img_h = self.level_dim[0]
        if use_padding:
            stop_y = start_y+h
            stop_x = start_x+w
        else:
            stop_y = min(start_y+h, img_h-ref_patch_size[1]+1)
            stop_x = min(start_x+w, img_w-ref_patch_size[0]+1)

        if isinstance(contour_fn, str):
            if contour_fn == 'four_pt':
                cont_check_fn = isInContourV3_Easy(contour=cont, patch_size=ref_patch_size[0], center_shift=0.5)
            else:
                raise NotImplementedError

        step_size_x = step_size * patch_downsample[0]
        step_size_y = step_size * patch_downsample[1]

        x_range = np.arange(start_x, stop_x, step=step_size_x)
        y_range = np.arange(start_y, stop_y, step=step_size_y)
        x_coords, y_coords = np.meshgrid(x_range, y_range, indexing='ij')
        coord_candidates = np.array([x_coords.flatten(), y_coords.flatten()]).transpose()

        iterable = [(coord, contour_holes, ref_patch_size[0], cont_check_fn) for coord in coord_candidates]
        results = [WholeSlideImage.process_coord_candidate(*args) for args in iterable]
        results = np.array([result for result in results if result is not None])
        return results, (x_range, y_range, ref_patch_size[0])

    @staticmethod
    def process_coord_candidate(coord, contour_holes, ref_patch_size, cont_check_fn):
        if WholeSlideImage.isInContours(cont_check_fn, coord, contour_holes, ref_patch_size):
            return coord
        else:
            return None


def clam_segment(path, **filter_params) -> WholeSlideImage:
    """create_patches_fp.py's defaults (seg_level -1: get_best_level_for_downsample(64), or 0 for one level;
    mthresh 7, close 4; a_t 100, a_h 16, max_n_holes 8) with use_otsu=True."""
    wsi = WholeSlideImage(path)
    seg_level = 0 if len(wsi.level_dim) == 1 else wsi.wsi.get_best_level_for_downsample(64)
    wsi.segmentTissue(seg_level=seg_level, sthresh=8, mthresh=7, close=4, use_otsu=True,
                      filter_params={"a_t": 100, "a_h": 16, "max_n_holes": 8, **filter_params})
    return wsi
# --- end of CLAM's code -------------------------------------------------------------------------------------------


def clam_keep(wsi: WholeSlideImage, xs, ys, patch_size) -> np.ndarray:
    """CLAM's decision for each tile whose level-0 corner is (xs[j], ys[i]): some contour whose process_contour
    would list that corner (it lies in the contour's bounding box) takes it (isInContours with 'four_pt')."""
    keep = np.zeros((len(ys), len(xs)), bool)
    for cont, holes in zip(wsi.contours_tissue, wsi.holes_tissue):
        bx, by, bw, bh = cv2.boundingRect(cont)
        check = isInContourV3_Easy(contour=cont, patch_size=patch_size, center_shift=0.5)
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                if bx <= x < bx + bw and by <= y < by + bh and not keep[i, j]:
                    keep[i, j] = bool(WholeSlideImage.isInContours(check, (x, y), holes, patch_size))
    return keep


def level0_corners(grid: hf.TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Every grid tile's level-0 corner, as grid.csv writes it: (x of each column, y of each row)."""
    rows, cols = grid.shape
    return (np.floor(np.arange(cols) * grid.stride * grid.downsample + 0.5).astype(np.int64),
            np.floor(np.arange(rows) * grid.stride * grid.downsample + 0.5).astype(np.int64))


@pytest.fixture(scope="module")
def holed(make_slide):
    """16384×12288, 60 % tissue in one large contour with holes of 7 and 16 reference patches (CLAM keeps holes
    over 16: none at its defaults); levels 1, 4×, 16×, 64× (256×192, the segmentation level)."""
    return make_slide(16384, 12288, seed=7, tissue_fraction=0.6, min_level_size=128)


@pytest.fixture(scope="module")
def scattered(make_slide):
    """16384×12288, 50 % tissue: one contour over CLAM's area filter, three under it."""
    return make_slide(16384, 12288, seed=5, tissue_fraction=0.5, min_level_size=128)


def _same_contours(ours: tissue.Segmentation, wsi: WholeSlideImage) -> None:
    assert len(ours.contours) == len(wsi.contours_tissue) and len(ours.holes) == len(wsi.holes_tissue)
    for a, b in zip(ours.contours, wsi.contours_tissue):
        assert a.dtype == b.dtype == np.int32
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ours.holes, wsi.holes_tissue):
        assert len(a) == len(b)
        for ha, hb in zip(a, b):
            np.testing.assert_array_equal(ha, hb)


@pytest.mark.parametrize("params", [{}, {"a_t": 1, "a_h": 1}, {"a_t": 1, "a_h": 1, "max_n_holes": 1},
                                    {"a_t": 4, "a_h": 8}])
def test_the_segmentation_is_clams(holed, scattered, params):
    for path in (holed, scattered):
        wsi = clam_segment(path, **params)
        with hf.open_slide(path) as slide:
            ours = tissue.segment_tissue(slide, **params)
            assert ours.level == wsi.wsi.get_best_level_for_downsample(64) == 3
            assert ours.scale == tuple(wsi.level_downsamples[3])
        _same_contours(ours, wsi)
    assert len(clam_segment(scattered).contours_tissue) == 1 and len(clam_segment(scattered, a_t=1).contours_tissue) > 2
    assert [len(h) for h in clam_segment(holed, a_t=1, a_h=1).holes_tissue] == [2]  # the holes are exercised


@pytest.mark.parametrize("tile, stride, level", [(256, 256, 1), (512, 128, 1), (96, 64, 2), (1024, 1024, 0)])
def test_tile_grid_keeps_the_tiles_clam_keeps(holed, scattered, tile, stride, level):
    for path in (holed, scattered):
        # level 0 (200 Mpixels) decodes only what the segmentation keeps: skip_background with tissue="otsu"
        grid = hf.tile_grid(path, tile, stride, level=level, tissue="otsu", skip_background=level == 0)
        wsi = clam_segment(path)
        patch = tile * int(wsi.level_downsamples[level][0])  # CLAM's ref_patch_size at patch_level=level
        expected = clam_keep(wsi, *level0_corners(grid), patch)
        assert grid.tissue == "otsu" and 0.1 < expected.mean() < 0.9
        np.testing.assert_array_equal(grid.keep, expected)
        np.testing.assert_array_equal(grid.keep, grid.segmented)
        assert len(grid.segmentation.contours) == len(wsi.contours_tissue)


@pytest.mark.parametrize("params", [{"a_t": 1, "a_h": 1}, {"a_t": 1, "a_h": 1, "max_n_holes": 1}])
def test_holes_and_small_contours_decide_as_in_clam(holed, scattered, params):
    for path in (holed, scattered):
        wsi = clam_segment(path, **params)
        with hf.open_slide(path) as slide:
            seg = tissue.segment_tissue(slide, **params)
        for tile, level in ((128, 1), (256, 0), (40, 2)):
            grid = hf.tile_grid(path, tile, level=level, max_white=1.0) if level else None
            if grid is None:  # level 0 undecoded: only its geometry is needed
                shape = (12288 // tile, 16384 // tile)
                grid = hf.TileGrid(str(path), 0, tile, tile, np.ones(shape, np.float32))
            patch = tile * int(wsi.level_downsamples[level][0])
            np.testing.assert_array_equal(seg.keep_grid(grid), clam_keep(wsi, *level0_corners(grid), patch))


def test_clams_own_patches_per_contour_are_the_ones_kept(holed):
    """CLAM's process_contour walks each contour's bounding box from its corner; on that lattice our decision for the
    contour gives exactly the coordinates CLAM lists."""
    wsi = clam_segment(holed, a_t=1, a_h=1)
    with hf.open_slide(holed) as slide:
        seg = tissue.segment_tissue(slide, a_t=1, a_h=1)
    for patch_size, step, level in ((256, 256, 0), (512, 256, 0), (128, 96, 1)):
        for k, (cont, holes) in enumerate(zip(wsi.contours_tissue, wsi.holes_tissue)):
            coords, (xs, ys, ref) = wsi.process_contour(cont, holes, level, None, patch_size, step)
            one = tissue.Segmentation([seg.contours[k]], [seg.holes[k]], seg.level, seg.scale, seg.level_downsamples)
            rows, cols = np.nonzero(one.keep(xs, ys, ref))
            ours = np.stack([xs[cols], ys[rows]], 1)
            assert len(coords) > 0
            assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, coords.tolist()))


def test_the_point_tests_are_opencvs_near_and_far_from_the_outline():
    rng = np.random.default_rng(3)
    mismatches = 0
    for _ in range(20):
        h, w = rng.integers(20, 120, 2)
        noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), rng.uniform(0.7, 5))
        contours, _ = cv2.findContours((noise > 0.5).astype(np.uint8) * 255, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        scale = (rng.uniform(1, 70), rng.uniform(1, 70))
        for contour in contours:
            c = np.array(contour * scale, dtype="int32")
            x, y = rng.uniform(-40, w * scale[0] + 40, 2000), rng.uniform(-40, h * scale[1] + 40, 2000)
            x[:400], y[:400] = np.round(x[:400]), np.round(y[:400])
            k = min(len(c), 100)
            x[400:400 + k], y[400:400 + k] = c[:k, 0, 0], c[:k, 0, 1]  # on the outline's vertices
            for strict in (False, True):
                got = tissue._Outline(c, max(1.0, min(scale) / 2))(x, y, strict)
                want = [cv2.pointPolygonTest(c, (float(a), float(b)), False) > (0 if strict else -1)
                        for a, b in zip(x, y)]
                mismatches += int((got != np.array(want)).sum())
    assert mismatches == 0


def test_the_default_rule_is_the_papers_and_otsu_still_reports_white_ratios(scattered):
    assert GridSpec().tissue == "hsv" and GridSpec(tissue="otsu").tissue == "otsu"
    default = hf.tile_grid(scattered, 256, level=1)
    hsv = hf.tile_grid(scattered, 256, level=1, tissue="hsv")
    otsu = hf.tile_grid(scattered, 256, level=1, tissue="otsu")
    assert default.segmented is None and default.segmentation is None and default.tissue == "hsv"
    np.testing.assert_array_equal(default.keep, default.white_ratio <= 0.5)
    np.testing.assert_array_equal(hsv.keep, default.keep)
    np.testing.assert_array_equal(otsu.white_ratio, default.white_ratio)
    assert (otsu.keep != default.keep).any()  # the rules differ (the small contours fall under CLAM's a_t)
    np.testing.assert_array_equal(otsu.with_max_white(0.1).keep, otsu.keep)


def test_a_slide_without_tissue_keeps_nothing(make_slide):
    blank = make_slide(2048, 2048, seed=1, tissue_fraction=0.0, min_level_size=64)
    grid = hf.tile_grid(blank, 256, tissue="otsu")
    assert grid.segmentation.contours == [] and not grid.keep.any()


def test_iter_tiles_and_the_dataset_cut_the_tiles_the_segmentation_keeps(scattered):
    grid = hf.tile_grid(scattered, 256, level=1, tissue="otsu")
    stream = hf.iter_tiles(scattered, 256, level=1, tissue="otsu", batch_size=32)
    coords = np.concatenate([b.coords for b in stream])
    np.testing.assert_array_equal(coords, grid.coords)
    np.testing.assert_array_equal(stream.grid.keep, grid.keep)
    np.testing.assert_array_equal(stream.grid.white_ratio, grid.white_ratio)
    fast = hf.iter_tiles(scattered, 256, level=1, tissue="otsu", skip_background=True, batch_size=32)
    batches = list(fast)
    assert fast.grid.skipped.any() and not (fast.grid.skipped & fast.grid.keep).any()
    np.testing.assert_array_equal(np.concatenate([b.coords for b in batches]), grid.coords)
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]),
                                  np.concatenate([b.images for b in hf.iter_tiles(scattered, 256, level=1,
                                                                                 tissue="otsu", batch_size=32)]))
    dataset = hf.TileDataset([scattered], grid=GridSpec(256, level=1, tissue="otsu"),
                             batch=BatchFormat(16, augment=None), progress=False)
    np.testing.assert_array_equal(dataset.samples.coords, grid.coords)


def test_a_resampled_view_decodes_only_the_kept_tiles_and_cuts_them_as_the_full_scan(scattered):
    augment = hf.Augment(rot90=True, max_shift=12, seed=1)  # shifts read beyond each kept tile
    full = hf.iter_tiles(scattered, 128, mpp=2.3, tissue="otsu", augment=augment)
    fast = hf.iter_tiles(scattered, 128, mpp=2.3, tissue="otsu", augment=augment, skip_background=True)
    a, b = list(full), list(fast)
    assert fast.grid.scale != 1 and fast.grid.skipped.any() and len(a) == len(b) > 0
    np.testing.assert_array_equal(fast.grid.keep, full.grid.keep)
    np.testing.assert_array_equal(fast.grid.skipped, ~full.grid.keep)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.images, y.images)
    wsi = clam_segment(scattered)
    xs, ys = level0_corners(full.grid)
    np.testing.assert_array_equal(full.grid.keep, clam_keep(wsi, xs, ys, round(128 * full.grid.downsample)))


def test_the_rule_is_checked_with_its_name():
    for bad in ("clam", "OTSU", 1, None):
        with pytest.raises(hf.HistofastError, match=r"tissue=.*expected 'hsv' .* or 'otsu'"):
            GridSpec(tissue=bad)
    with pytest.raises(hf.HistofastError, match="tissue='clam'"):
        hf.tile_grid("no-such-file.svs", tissue="clam")  # checked before the slide is opened
    with pytest.raises(hf.HistofastError, match="tissue='clam'"):
        hf.iter_tiles("no-such-file.svs", tissue="clam")


def test_the_rule_travels_in_grid_csv_and_older_csvs_read_as_the_papers(scattered, tmp_path):
    otsu = hf.tile_grid(scattered, 256, level=1, tissue="otsu")
    otsu.to_csv(tmp_path / "otsu.csv")
    back = hf.TileGrid.from_csv(tmp_path / "otsu.csv")
    assert back.tissue == "otsu" and back.segmentation is None
    np.testing.assert_array_equal(back.keep, otsu.keep)
    np.testing.assert_array_equal(back.white_ratio, otsu.white_ratio)
    hf.tile_grid(scattered, 256, level=1).to_csv(tmp_path / "hsv.csv")
    with open(tmp_path / "hsv.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["tissue"] for r in rows} == {"hsv"}
    with open(tmp_path / "old.csv", "w", newline="") as f:  # written before the column existed
        w = csv.DictWriter(f, [k for k in rows[0] if k != "tissue"])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k != "tissue"} for r in rows)
    old = hf.TileGrid.from_csv(tmp_path / "old.csv")
    assert old.tissue == "hsv" and old.segmented is None
    np.testing.assert_array_equal(old.keep, hf.TileGrid.from_csv(tmp_path / "hsv.csv").keep)


def test_train_config_and_the_tile_flags_take_the_rule():
    from histofast.cli import build_parser
    from histofast.cli.common import export_options
    from histofast.train import TrainConfig

    assert TrainConfig(data="x.csv").grid.tissue == "hsv"
    assert TrainConfig(data="x.csv", tissue="otsu").grid.tissue == "otsu"
    assert TrainConfig.from_dict({"data": "x.csv", "tissue": "otsu"}).grid.tissue == "otsu"
    with pytest.raises(hf.HistofastError, match="tissue='clam'"):
        TrainConfig(data="x.csv", tissue="clam")
    parser = build_parser()
    args = parser.parse_args(["train", "x.csv", "--tissue", "otsu"])
    assert args.tissue == "otsu"
    for command in ("tile", "demo"):
        argv = [command, *(["x.svs"] if command == "tile" else []), "--out", "o"]
        assert export_options(parser.parse_args(argv)).grid.tissue == "hsv"
        assert export_options(parser.parse_args([*argv, "--tissue", "otsu"])).grid.tissue == "otsu"
    with pytest.raises(SystemExit):
        parser.parse_args(["tile", "x.svs", "--out", "o", "--tissue", "clam"])


def test_settings_json_records_the_rule_and_older_ones_read_it_at_its_default():
    from histofast.export import ExportOptions

    key = ExportOptions(grid=GridSpec(256, tissue="otsu")).key()
    assert key["tissue"] == "otsu"
    assert ExportOptions.recorded(json.loads(json.dumps(key))) == key
    old = {k: v for k, v in ExportOptions(grid=GridSpec(256)).key().items() if k != "tissue"}  # before the setting
    assert ExportOptions.recorded(old) == ExportOptions(grid=GridSpec(256)).key()
    assert ExportOptions.recorded(old) != key


def test_histofast_tile_otsu_writes_clams_tiles_and_draws_the_contours(scattered, tmp_path, capsys):
    from histofast.cli import main

    out = tmp_path / "out"
    argv = ["tile", str(scattered), "--out", str(out), "--tile-size", "256", "--level", "1", "--format", "none",
            "--qc", "--quiet", "--tissue", "otsu"]
    assert main(argv) == 0
    folder = out / scattered.stem
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = hf.tile_grid(scattered, 256, level=1, tissue="otsu").coords
    assert [(int(r["x"]), int(r["y"])) for r in rows] == [tuple(c) for c in expected.tolist()]
    assert json.loads((folder / "settings.json").read_text())["tissue"] == "otsu"
    assert hf.TileGrid.from_csv(folder / "grid.csv").tissue == "otsu"
    from PIL import Image

    qc = np.asarray(Image.open(folder / "qc.png"))
    assert (qc == tissue_colour()).all(-1).sum() > 100  # the contour is drawn
    capsys.readouterr()
    assert main([*argv[:3], str(tmp_path / "other"), *argv[4:-1], "hsv"]) == 0  # same flags, the paper's rule
    assert main([*argv[:-1], "hsv"]) == 1  # a rerun into the folder with the other rule
    assert "tissue \"otsu\" there, \"hsv\" now" in capsys.readouterr().err


def tissue_colour() -> tuple[int, int, int]:
    from histofast.export import qc

    return qc.CONTOUR_COLOUR


def test_the_segmentation_is_computed_once_per_grid(scattered, monkeypatch):
    calls = []
    real = scan.segment_tissue

    @functools.wraps(real)
    def counting(slide):
        calls.append(slide.path)
        return real(slide)

    monkeypatch.setattr(scan, "segment_tissue", counting)
    hf.tile_grid(scattered, 256, level=1, tissue="otsu")
    list(hf.iter_tiles(scattered, 256, level=1, tissue="otsu"))
    hf.tile_grid(scattered, 256, level=1)
    assert len(calls) == 2
