"""Models: the fused two-level patch→image CNN and the paper's baselines (SimpleCNN, GoogLeNet, Inception v3),
in plain PyTorch; ``build_model`` makes one by name, ``load_pretrained``/``freeze`` do transfer learning."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from ..errors import HistofastError
from .googlenet import GoogLeNet
from .inception import InceptionV3
from .simple_cnn import SimpleCNN
from .transfer import LoadReport, freeze, load_pretrained, load_state, read_state_dict
from .two_level import ImageLevelNet, PatchNet, TwoLevelCNN


def two_level_cnn(num_classes: int = 4, tile_size: int = 512, image_size: int = 2560, patch_stride: int = 512,
                  patch_widths: Sequence[int] = (16, 32, 64, 128, 256), image_widths: Sequence[int] = (64, 128),
                  dropout: float = 0.5) -> TwoLevelCNN:
    """A ``TwoLevelCNN`` for images of ``image_size`` cut into patches of ``tile_size`` at ``patch_stride`` (pixels)."""
    patch_net = PatchNet(num_classes, tile_size, patch_widths)
    rows, cols = TwoLevelCNN.grid_of(image_size, tile_size, patch_stride)
    image_net = ImageLevelNet(rows * cols, patch_net.map_size, num_classes, image_widths, dropout=dropout)
    return TwoLevelCNN(patch_net, image_net, image_size, patch_stride)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "two_level_cnn": two_level_cnn, "simple_cnn": SimpleCNN, "googlenet": GoogLeNet, "inception_v3": InceptionV3,
}


def check_model_name(name: str) -> str:
    """``name`` when it is one of ``MODELS``; otherwise an error listing them."""
    if name not in MODELS:
        raise HistofastError(f"model={name!r}: unknown; expected one of {', '.join(MODELS)}")
    return name


def build_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """The model called ``name`` (one of ``MODELS``) for ``num_classes`` classes; ``options`` go to its constructor."""
    check_model_name(name)
    try:
        return MODELS[name](num_classes=num_classes, **options)
    except TypeError as e:  # an option this model does not take
        raise HistofastError(f"model={name!r}: {e}") from None


__all__ = [
    "GoogLeNet", "ImageLevelNet", "InceptionV3", "LoadReport", "MODELS", "PatchNet", "SimpleCNN", "TwoLevelCNN",
    "build_model", "check_model_name", "freeze", "load_pretrained", "load_state", "read_state_dict", "two_level_cnn",
]
