"""GoogLeNet (Inception v1, Szegedy et al. 2014) with its two auxiliary classifiers, for [B, 3, H, W] images;
ported from torchvision (BSD-3-Clause), same module names so torchvision state dicts load."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_count
from ..errors import HistofastError
from ..ops import IMAGENET_MEAN, IMAGENET_STD


class GoogLeNetOutputs(NamedTuple):
    """What ``GoogLeNet`` returns in training mode with aux heads: three [B, num_classes] logits."""
    logits: Tensor
    aux_logits2: Tensor
    aux_logits1: Tensor


def check_images(images: Tensor, minimum: int, needs: str) -> None:
    """Raise ``HistofastError`` unless ``images`` is [B, 3, H, W] with H, W ≥ ``minimum``; ``needs`` ends the
    message ("GoogLeNet needs at least 15×15")."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise HistofastError(f"images: shape {tuple(images.shape)}, expected (B, 3, H, W)")
    h, w = images.shape[-2:]
    if min(h, w) < minimum:
        raise HistofastError(f"images of {h}×{w} pixels: {needs}")


def imagenet_to_unit_range(x: Tensor) -> Tensor:
    """``transform_input``: ImageNet-normalised images ((x - mean) / std) → the [-1, 1] scaling ((x - 0.5) / 0.5)
    of the weights torchvision ported from TensorFlow (GoogLeNet's and Inception v3's ImageNet weights)."""
    scale = x.new_tensor([s / 0.5 for s in IMAGENET_STD]).view(1, 3, 1, 1)
    shift = x.new_tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN]).view(1, 3, 1, 1)
    return x * scale + shift


class BasicConv2d(nn.Module):
    """Conv2d without bias → BatchNorm (eps 0.001) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1×1; 1×1 → 3×3; 1×1 → "5×5"; 3×3 max-pool → 1×1."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        # The paper's 5×5 branch is a 3×3 conv in torchvision (pytorch/vision#906); kept so its weights load.
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: adaptive average pool to 4×4 → 1×1 conv (128) → fc 1024 → ReLU → dropout → fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class GoogLeNet(nn.Module):
    """GoogLeNet: [B, 3, H, W] float images, H, W ≥ ``min_size`` → logits [B, num_classes].

    Inputs are normalised as torchvision's ImageNet weights expect ((x - mean) / std with ImageNet's mean and
    std). ``transform_input=True`` maps such inputs to the [-1, 1] scaling that torchvision's GoogLeNet
    ImageNet weights were trained with (torchvision's builder turns it on with those weights).

    In training mode with ``aux_logits``, returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, the aux
    heads reading inception4d's and inception4a's maps; train on ``loss(logits) + Σ w · loss(aux)`` with
    ``aux_weights``. Otherwise (eval mode, or no aux heads) returns the logits tensor.

    torchvision's ImageNet file for GoogLeNet holds (untrained) aux1/aux2 weights: ``load_state_dict`` it
    strictly into ``GoogLeNet(aux_logits=True)`` (``optional_modules`` lets ``load_pretrained`` skip them).

    Args:
        num_classes: outputs of the classifiers.
        aux_logits: build the two auxiliary classifiers (``aux1``, ``aux2``).
        transform_input: rescale ImageNet-normalised inputs to [-1, 1] first (see above).
        dropout: before the final classifier.
        dropout_aux: in the auxiliary classifiers, before their last layer.
    """

    min_size = 15  # smallest H, W, as torchvision's weights metadata says (at 14, maxpool3 gets a 1×1 map)
    aux_weights = (0.3, 0.3)  # loss weights of aux_logits2, aux_logits1 (paper; torchvision's reference)
    optional_modules = ("aux1", "aux2")

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = False,
                 dropout: float = 0.2, dropout_aux: float = 0.7) -> None:
        super().__init__()
        self.num_classes = check_count(num_classes, "num_classes")
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

        self.aux1 = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, images: Tensor) -> Tensor | GoogLeNetOutputs:
        check_images(images, self.min_size, f"GoogLeNet needs at least {self.min_size}×{self.min_size}")
        x = imagenet_to_unit_range(images) if self.transform_input else images
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))  # 192 × H/8
        x = self.inception4a(self.maxpool3(self.inception3b(self.inception3a(x))))  # 512 × H/16
        aux = self.training and self.aux_logits
        aux1 = self.aux1(x) if aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # 528 × H/16
        aux2 = self.aux2(x) if aux else None
        x = self.inception5b(self.inception5a(self.maxpool4(self.inception4e(x))))  # 1024 × H/32
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return GoogLeNetOutputs(logits, aux2, aux1) if aux else logits
