"""histofast.Augment: seeded, batch-invariant parameter draws, and apply() == ops.augment."""
from __future__ import annotations

import numpy as np
import pytest

from histofast import Augment, HistofastError, ops


def test_same_seed_same_draw_and_new_epoch_new_draw():
    aug = Augment(max_shift=16, max_angle=10.0, seed=3)
    a, b = aug.draw(100, epoch=2), Augment(max_shift=16, max_angle=10.0, seed=3).draw(100, epoch=2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["rot90"], aug.draw(100, epoch=3)["rot90"])
    assert not np.array_equal(a["rot90"], Augment(max_shift=16, seed=4).draw(100, epoch=2)["rot90"])


def test_draw_does_not_depend_on_batching():
    aug = Augment(max_shift=5, max_angle=30.0, seed=1)
    whole = aug.draw(50, epoch=1)
    parts = [aug.draw(n, epoch=1, start=s) for s, n in [(0, 7), (7, 1), (8, 42)]]
    for key in whole:
        np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))


def test_draw_ranges_and_shapes():
    p = Augment(max_shift=3, max_angle=20.0).draw(4000)
    assert p["rot90"].dtype == np.int64 and set(np.unique(p["rot90"])) == {0, 1, 2, 3}
    assert p["flip"].dtype == bool and 0.45 < p["flip"].mean() < 0.55
    assert p["shift"].shape == (4000, 2) and set(np.unique(p["shift"])) == set(range(-3, 4))
    assert p["angle"].shape == (4000,) and -20 <= p["angle"].min() < -19 and 19 < p["angle"].max() <= 20


def test_disabled_transforms_are_identity():
    p = Augment(rot90=False, flip=False).draw(10)
    assert not p["rot90"].any() and not p["flip"].any() and not p["shift"].any() and not p["angle"].any()


def test_apply_is_ops_augment_with_the_draw():
    rng = np.random.default_rng(0)
    region = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    origins = np.stack([rng.integers(0, 89, 9), rng.integers(0, 69, 9)], 1)
    aug = Augment(max_shift=8, seed=5)
    out = aug.apply(region, origins, 32, epoch=1, start=4, out_dtype="uint8")
    expect = ops.augment(region, origins, 32, **aug.draw(9, epoch=1, start=4), out_dtype="uint8")
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(max_shift=-1), "max_shift=-1"),
        (dict(max_shift=1.5), "max_shift=1.5"),
        (dict(max_angle=200.0), "max_angle=200.0"),
        (dict(seed=-2), "seed=-2"),
        (dict(max_angle="10"), "max_angle='10': must be a number of degrees"),  # issue 15, item 14
        (dict(max_angle=True), "max_angle=True"),
        (dict(max_shift=2**63), f"max_shift={2**63}: must be at most 2147483647 pixels"),
        (dict(max_shift=True), "max_shift=True"),
    ],
)
def test_bad_parameters(kwargs, fragment):
    with pytest.raises(HistofastError, match=fragment.replace(".", r"\.")):
        Augment(**kwargs)
