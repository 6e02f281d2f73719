"""The two-level CNN: PatchNet turns each patch into a one-channel feature map, ImageLevelNet reads the
maps of an image's patches stacked as channels, and TwoLevelCNN fuses both into one forward pass."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..checks import check_count
from ..errors import HistofastError
from ..ops import grid_shape

DOWNSAMPLES = 3  # PatchNet: 512 → 64 (the seed's text; its code's five downsamples contradict its 64×64 linear)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """conv (k×k, 'same' padding for 3×3) + BatchNorm + ReLU."""
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _stage(cin: int, width: int, downsample: bool) -> nn.Sequential:
    """A conv3×3+BN+ReLU pair at ``width`` channels, then (optionally) a learnable 2×2 stride-2 conv
    in place of max-pooling."""
    layers = _conv(cin, width, 3) + _conv(width, width, 3)
    if downsample:
        layers += _conv(width, width, 2, stride=2)
    return nn.Sequential(*layers)


def _init(module: nn.Module) -> None:
    """The seed's init: Kaiming-normal convs with zero bias, BN weight 1 bias 0, linear weights N(0, 0.01)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _widths(widths: Sequence[int], name: str, minimum: int) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or len(widths) < minimum:
        raise HistofastError(f"{name}={widths!r}: expected at least {minimum} channel counts")
    return tuple(check_count(w, f"{name}[{i}]") for i, w in enumerate(widths))


class PatchNet(nn.Module):
    """The patch network: [N, 3, t, t] patches → one-channel feature maps [N, t/8, t/8] → class logits.

    Stage i is a conv3×3+BN+ReLU pair at ``widths[i]`` channels; the first three stages end in a
    2×2 stride-2 conv (+BN+ReLU), so 512 → 64; a 1×1 conv makes the one-channel map and a linear layer
    the logits (the patch head, trained in the patch stage on patches with their image's label).

    Args:
        num_classes: classes of the linear head.
        tile_size: patch side in pixels; divisible by 8.
        widths: channels per stage, at least 4 (default the seed's 16→32→64→128→256).
    """

    def __init__(self, num_classes: int = 4, tile_size: int = 512,
                 widths: Sequence[int] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        self.num_classes = check_count(num_classes, "num_classes")
        self.tile_size = check_count(tile_size, "tile_size")
        if tile_size % (1 << DOWNSAMPLES):
            raise HistofastError(f"tile_size={tile_size}: must be divisible by {1 << DOWNSAMPLES} (pixels)")
        self.widths = _widths(widths, "widths", DOWNSAMPLES + 1)
        self.map_size = tile_size >> DOWNSAMPLES
        cins = (3,) + self.widths[:-1]
        self.stages = nn.Sequential(*(_stage(c, w, i < DOWNSAMPLES) for i, (c, w) in enumerate(zip(cins, self.widths))))
        self.to_map = nn.Conv2d(self.widths[-1], 1, 1)
        self.classifier = nn.Linear(self.map_size ** 2, num_classes)
        _init(self)

    def features(self, patches: torch.Tensor) -> torch.Tensor:
        """[N, 3, t, t] → the one-channel patch feature maps [N, t/8, t/8]."""
        if patches.ndim != 4 or patches.shape[1] != 3 or patches.shape[-2:] != (self.tile_size,) * 2:
            raise HistofastError(f"patches: shape {tuple(patches.shape)}, expected (N, 3, {self.tile_size}, "
                                 f"{self.tile_size})")
        return self.to_map(self.stages(patches)).squeeze(1)

    def head(self, maps: torch.Tensor) -> torch.Tensor:
        """Feature maps [..., m, m] → logits [..., num_classes]."""
        return self.classifier(maps.flatten(-2))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """[N, 3, t, t] float patches → logits [N, num_classes]."""
        return self.head(self.features(patches))


class ImageLevelNet(nn.Module):
    """The image network: the P patch maps of an image stacked as channels [B, P, m, m] → logits.

    Two conv3×3+BN+ReLU pairs (P→64→64, 64→128→128), each followed by a 2×2 stride-2 conv, take
    m → m/4 (64 → 16); a 1×1 conv makes one channel, and the seed's classifier (linear
    (m/4)² → 128 → 128 → 64 → classes, ReLU and dropout between) gives the logits.

    Args:
        num_maps: P, the patches per image (25 for a 2560 image at patch stride 512, 81 at stride 256).
        map_size: m, the side of a patch map (``PatchNet.map_size``); divisible by 4.
        widths: channels of the two stages. hidden: the classifier's hidden sizes. dropout: between them.
    """

    def __init__(self, num_maps: int, map_size: int = 64, num_classes: int = 4, widths: Sequence[int] = (64, 128),
                 hidden: Sequence[int] = (128, 128, 64), dropout: float = 0.5) -> None:
        super().__init__()
        self.num_maps = check_count(num_maps, "num_maps")
        self.map_size = check_count(map_size, "map_size")
        self.num_classes = check_count(num_classes, "num_classes")
        widths = _widths(widths, "widths", 1)
        if map_size % (1 << len(widths)):  # each stage halves the maps
            raise HistofastError(f"map_size={map_size}: must be divisible by {1 << len(widths)} (patch tile_size by "
                                 f"{8 << len(widths)})")
        cins = (num_maps,) + widths[:-1]
        self.stages = nn.Sequential(*(_stage(c, w, True) for c, w in zip(cins, widths)))
        self.to_map = nn.Conv2d(widths[-1], 1, 1)
        sizes = ((map_size >> len(widths)) ** 2,) + _widths(hidden, "hidden", 0)
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.classifier = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))
        _init(self)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """[B, P, m, m] stacked patch maps → logits [B, num_classes]."""
        if maps.ndim != 4 or maps.shape[1:] != (self.num_maps, self.map_size, self.map_size):
            raise HistofastError(f"maps: shape {tuple(maps.shape)}, expected (B, {self.num_maps}, {self.map_size}, "
                                 f"{self.map_size})")
        return self.classifier(self.to_map(self.stages(maps)).flatten(1))


class TwoLevelCNN(nn.Module):
    """The fused two-level model: all B·P patches through the patch net in one batch, their maps stacked
    per image as channels, then the image net.

    Args:
        patch_net: a ``PatchNet`` (its ``tile_size`` is the patch size t).
        image_net: an ``ImageLevelNet`` with ``num_maps`` = P and ``map_size`` = ``patch_net.map_size``.
        image_size: image side in pixels; patch_stride: the patch grid's stride
            (P = n², n = (image_size − t) // stride + 1).
    """

    def __init__(self, patch_net: PatchNet, image_net: ImageLevelNet, image_size: int = 2560,
                 patch_stride: int = 512) -> None:
        super().__init__()
        t = patch_net.tile_size
        self.image_size, self.patch_stride = image_size, patch_stride
        self.grid = self.grid_of(image_size, t, patch_stride)
        patches = self.grid[0] * self.grid[1]
        if image_net.num_maps != patches or image_net.map_size != patch_net.map_size:
            raise HistofastError(
                f"image_net takes {image_net.num_maps} maps of {image_net.map_size}², but a {image_size} image at "
                f"patch stride {patch_stride} gives {patches} patches of {t} → maps of {patch_net.map_size}²")
        self.patch_net, self.image_net = patch_net, image_net

    @staticmethod
    def grid_of(image_size: int, tile_size: int, patch_stride: int) -> tuple[int, int]:
        """(rows, cols) of the patch grid of an image; an image smaller than one patch is an error."""
        if check_count(image_size, "image_size") < tile_size:
            raise HistofastError(f"image_size={image_size}: smaller than one patch ({tile_size} pixels)")
        return grid_shape(image_size, image_size, tile_size, check_count(patch_stride, "patch_stride"))

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images (H = W = image_size) → the row-major patch grid [B, P, 3, t, t] (views, on the
        images' device); [B, P, 3, t, t] is checked and passed through."""
        t, s, p = self.patch_net.tile_size, self.patch_stride, self.num_patches
        if images.ndim == 5 and images.shape[1:] == (p, 3, t, t):
            return images
        if images.ndim == 4 and images.shape[1] == 3 and min(images.shape[-2:]) < t:
            raise HistofastError(f"images: {tuple(images.shape[-2:])} pixels, smaller than one patch ({t}×{t})")
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise HistofastError(f"images: shape {tuple(images.shape)}, expected (B, 3, {self.image_size}, "
                                 f"{self.image_size}) or (B, {p}, 3, {t}, {t})")
        grid = images.unfold(2, t, s).unfold(3, t, s)  # [B, 3, rows, cols, t, t]
        return grid.permute(0, 2, 3, 1, 4, 5).reshape(len(images), p, 3, t, t)

    def patch_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Images ([B, 3, H, W] or [B, P, 3, t, t]) → patch maps stacked as channels [B, P, m, m]."""
        patches = self.patches(images)
        b = len(patches)
        maps = self.patch_net.features(patches.flatten(0, 1))
        return maps.reshape(b, self.num_patches, *maps.shape[-2:])

    def patch_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The patch head's logits of every patch: [B, P, num_classes]."""
        return self.patch_net.head(self.patch_maps(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ([B, 3, H, W] or [B, P, 3, t, t], float) → image logits [B, num_classes]."""
        return self.image_net(self.patch_maps(images))
