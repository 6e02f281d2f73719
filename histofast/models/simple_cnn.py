"""SimpleCNN: the paper's plain convolutional baseline, a stack of conv3×3+BN+ReLU+max-pool blocks,
global average pooling and a linear classifier; any input size of at least 2^len(widths) pixels."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..checks import check_count
from ..errors import HistofastError


class SimpleCNN(nn.Module):
    """[B, 3, H, W] float images → logits [B, num_classes].

    Args:
        num_classes: classes of the linear head.
        widths: channels of the blocks; each block halves H and W (max-pool 2×2).
        dropout: before the classifier.
    """

    def __init__(self, num_classes: int = 2, widths: Sequence[int] = (32, 64, 128, 256), dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = check_count(num_classes, "num_classes")
        if isinstance(widths, (str, bytes)) or not widths:
            raise HistofastError(f"widths={widths!r}: expected one channel count per block")
        widths = [check_count(w, f"widths[{i}]") for i, w in enumerate(widths)]
        layers: list[nn.Module] = []
        for cin, cout in zip([3] + widths[:-1], widths):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.min_size = 1 << len(widths)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < self.min_size:
            raise HistofastError(f"images: shape {tuple(images.shape)}, expected (B, 3, H, W) with H, W ≥ "
                                 f"{self.min_size} pixels")
        return self.classifier(self.features(images).mean((2, 3), keepdim=True))
