"""histofast.train.tta: the 8 dihedral views of tiles and of patch grids (which turn as the whole image), and
per-patch predictions averaged over views in the original patch order."""
from __future__ import annotations

import pytest
import torch

from histofast import HistofastError
from histofast.models import two_level_cnn
from histofast.train.tta import dihedral, dihedral_views

TINY = dict(patch_widths=(4, 8, 8, 8), image_widths=(8, 8))


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("image, tile, stride", [(320, 64, 64), (320, 64, 32)])
def test_dihedral_of_patch_grids_turns_the_whole_image(image, tile, stride):
    model = two_level_cnn(2, tile, image, stride, **TINY)
    x = randn(2, 3, image, image)
    for flip in (False, True):
        for k in range(4):
            whole = torch.rot90(x, k, (2, 3))
            whole = whole.flip(3) if flip else whole
            turned = dihedral(model.patches(x), k, flip)
            assert torch.equal(turned, model.patches(whole))
            assert torch.equal(dihedral(x, k, flip), whole)
    assert len(dihedral_views(x, 8)) == 8 and dihedral_views(x, 1)[0] is x
    with pytest.raises(HistofastError, match="tta=4: expected 1 or 8"):
        dihedral_views(x, 4)


def test_mean_over_views_puts_patches_back_in_place():
    """Per-patch predictions of the 8 views of a patch grid, averaged patch by patch: a function of each
    patch's content that is invariant to turns gives back exactly its value on the original patches."""
    from histofast.train.tta import mean_over_views

    images = randn(2, 9, 3, 8, 8)
    views = dihedral_views(images, 8)
    score = [v.flatten(2).sort(-1).values[..., -3:].reshape(-1, 3) for v in views]  # turn-invariant "probabilities"
    torch.testing.assert_close(mean_over_views(score, images), score[0], rtol=0, atol=1e-6)
    tiles = randn(4, 3, 8, 8)
    assert mean_over_views([tiles.flatten(1)[:, :2]] * 8, tiles).shape == (4, 2)
