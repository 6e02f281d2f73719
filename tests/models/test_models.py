"""histofast.models: the two-level CNN and SimpleCNN (shapes, init, patch cutting against the Pipeline),
build_model, load_pretrained's key-layout mapping and freeze."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from histofast import HistofastError
from histofast.models import (
    GoogLeNet,
    ImageLevelNet,
    PatchNet,
    SimpleCNN,
    TwoLevelCNN,
    build_model,
    freeze,
    load_pretrained,
    two_level_cnn,
)

TINY = dict(patch_widths=(4, 8, 8, 8), image_widths=(8, 8))


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tile", [32, 64, 72, 96])
def test_patch_net_shapes(tile):
    net = PatchNet(3, tile, (4, 8, 8, 8, 16)).eval()
    x = randn(2, 3, tile, tile)
    assert net.features(x).shape == (2, tile // 8, tile // 8)
    assert net(x).shape == (2, 3)


def test_patch_net_default_is_the_seed_architecture():
    net = PatchNet()
    convs = [m for m in net.stages.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 32, 64, 64, 64, 128, 128, 256, 256]
    assert sum(c.stride == (2, 2) and c.kernel_size == (2, 2) for c in convs) == 3  # 512 → 64
    assert net.map_size == 64 and net.classifier.in_features == 64 * 64


def test_image_level_net_default_is_the_seed_architecture():
    net = ImageLevelNet(25)
    assert [m.out_features for m in net.classifier if isinstance(m, nn.Linear)] == [128, 128, 64, 4]
    assert net.classifier[0].in_features == 256  # 64 → 16, one channel
    assert [m.p for m in net.classifier if isinstance(m, nn.Dropout)] == [0.5] * 3
    out = net.eval()(randn(2, 25, 64, 64))
    assert out.shape == (2, 4)


def test_seed_init():
    torch.manual_seed(0)
    net = ImageLevelNet(81, 64, 4)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            assert torch.all(m.bias == 0)
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert abs(m.weight.std().item() - (2 / fan_out) ** 0.5) < 0.25 * (2 / fan_out) ** 0.5
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        elif isinstance(m, nn.Linear):
            assert abs(m.weight.std().item() - 0.01) < 0.002 and torch.all(m.bias == 0)


@pytest.mark.parametrize("image, tile, stride", [(320, 64, 64), (320, 64, 32), (288, 64, 56), (128, 32, 32)])
def test_two_level_shapes_and_both_inputs(image, tile, stride):
    torch.manual_seed(0)
    model = two_level_cnn(3, tile, image, stride, **TINY).eval()
    n = (image - tile) // stride + 1
    assert model.num_patches == n * n
    x = randn(2, 3, image, image)
    patches = model.patches(x)
    assert patches.shape == (2, n * n, 3, tile, tile)
    for p in (0, n * n // 2, n * n - 1):  # row-major grid
        r, c = divmod(p, n)
        assert torch.equal(patches[1, p], x[1, :, r * stride : r * stride + tile, c * stride : c * stride + tile])
    out = model(x)
    assert out.shape == (2, 3)
    torch.testing.assert_close(model(patches), out, rtol=0, atol=0)
    assert model.patch_logits(x).shape == (2, n * n, 3)
    assert model.patch_maps(x).shape == (2, n * n, tile // 8, tile // 8)


def test_two_level_patches_follow_the_pipeline_order(tmp_path):
    """Images mode of the Pipeline and TwoLevelCNN.patches cut the same row-major grid."""
    from histofast import Pipeline, synth

    root = synth.write_region_dataset(tmp_path, ("NORM", "SC"), n_per_class=1, size=200, seed=3)
    pipe = Pipeline(root / "manifest.csv", 64, 32, mode="images", image_size=192, augment=None, shuffle=False,
                    batch_size=1, dtype="uint8", backend="torch", lanes=1, progress=False)
    model = two_level_cnn(2, 64, 192, 32, **TINY)
    from PIL import Image

    batch = next(iter(pipe))
    slide = pipe.slides[int(batch["slide"][0])]
    x, y = int(batch["x"][0]), int(batch["y"][0])
    window = np.array(Image.open(slide).convert("RGB"))[y : y + 192, x : x + 192]
    expected = model.patches(torch.from_numpy(window).permute(2, 0, 1)[None])
    assert torch.equal(batch["image"], expected)


def test_two_level_bad_input():
    with pytest.raises(HistofastError, match="smaller than one patch"):
        two_level_cnn(2, 64, 48, 32, **TINY)
    model = two_level_cnn(2, 64, 192, 64, **TINY)
    with pytest.raises(HistofastError, match="smaller than one patch"):
        model(randn(1, 3, 40, 40))
    with pytest.raises(HistofastError, match=r"expected \(B, 3, 192, 192\) or \(B, 9, 3, 64, 64\)"):
        model(randn(1, 3, 200, 200))
    with pytest.raises(HistofastError, match="image_net takes 25 maps"):
        TwoLevelCNN(PatchNet(2, 64, TINY["patch_widths"]), ImageLevelNet(25, 8, 2, (8, 8)), 192, 64)
    with pytest.raises(HistofastError, match="tile_size=60: must be divisible by 8"):
        PatchNet(2, 60)
    with pytest.raises(HistofastError, match="widths="):
        PatchNet(2, 64, (4, 8))
    with pytest.raises(HistofastError, match="map_size=6: must be divisible by 4"):
        ImageLevelNet(4, 6)
    with pytest.raises(HistofastError, match=r"map_size=4: must be divisible by 8 \(patch tile_size by 64\)"):
        ImageLevelNet(4, 4, widths=(8, 8, 8))


@pytest.mark.parametrize("size", [16, 64, 99])
def test_simple_cnn_shapes(size):
    net = SimpleCNN(3).eval()
    assert net(randn(2, 3, size, size)).shape == (2, 3)
    with pytest.raises(HistofastError, match="H, W ≥ 16"):
        net(randn(1, 3, 8, 8))


def test_build_model():
    assert isinstance(build_model("simple_cnn", 5), SimpleCNN)
    with pytest.raises(HistofastError, match="model='resnet': unknown; expected one of two_level_cnn, simple_cnn"):
        build_model("resnet", 2)
    with pytest.raises(HistofastError, match="model='simple_cnn'.*unexpected keyword"):
        build_model("simple_cnn", 2, image_size=3)
    with pytest.raises(HistofastError, match="num_classes=0"):
        build_model("two_level_cnn", 0)


# ------------------------------------------------------------------ load_pretrained, freeze


def _equal_states(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ()) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items() if not k.startswith(skip))


@pytest.mark.parametrize("wrap", ["bare", "module", "compiled", "nested"])
def test_load_pretrained_maps_key_layouts(tmp_path, wrap):
    """A state dict saved from the model itself, under the names DataParallel, torch.compile and
    training scripts give it, loads back exactly."""
    torch.manual_seed(1)
    source = GoogLeNet(num_classes=4)
    state = source.state_dict()
    renamed = {"bare": state, "module": {f"module.{k}": v for k, v in state.items()},
               "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
               "nested": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}}[wrap]
    torch.save(renamed, tmp_path / "w.pth")
    torch.manual_seed(2)
    target = GoogLeNet(num_classes=4)
    assert not _equal_states(source, target)
    report = load_pretrained(target, tmp_path / "w.pth")
    assert _equal_states(source, target) and not report.skipped


def test_load_pretrained_other_class_count_and_aux(tmp_path):
    """An ImageNet-style file (1000 classes, aux heads) into a 4-class model without aux: the backbone
    loads, fc is left as initialised and listed; strict=True refuses, listing the keys."""
    torch.manual_seed(1)
    torch.save(GoogLeNet(num_classes=1000, aux_logits=True).state_dict(), tmp_path / "imagenet.pth")
    source = torch.load(tmp_path / "imagenet.pth", weights_only=True)
    torch.manual_seed(2)
    target = GoogLeNet(num_classes=4)
    fc = target.fc.weight.clone()
    report = load_pretrained(target, tmp_path / "imagenet.pth")
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert torch.equal(target.fc.weight, fc)
    assert torch.equal(target.conv1.conv.weight, source["conv1.conv.weight"])
    with pytest.raises(HistofastError, match=r"shape mismatch: fc.weight \(1000, 1024\) in the file vs \(4, 1024\)"):
        load_pretrained(GoogLeNet(num_classes=4), tmp_path / "imagenet.pth", strict=True)


def test_load_pretrained_refuses_another_model(tmp_path):
    torch.save(SimpleCNN(4).state_dict(), tmp_path / "simple.pth")
    with pytest.raises(HistofastError, match=r"simple.pth does not fit GoogLeNet \(0 of \d+ keys match\); "
                                             r"missing: conv1.conv.weight.*unexpected: features.0.weight"):
        load_pretrained(GoogLeNet(num_classes=4), tmp_path / "simple.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HistofastError, match="junk.pth: not a PyTorch state dict"):
        load_pretrained(SimpleCNN(4), tmp_path / "junk.pth")
    with pytest.raises(HistofastError, match="nothere.pth: no such file"):
        load_pretrained(SimpleCNN(4), tmp_path / "nothere.pth")


def test_frozen_layers_do_not_change_in_a_training_step():
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=3)
    frozen = freeze(model, until="inception4a")
    assert frozen[:3] == ["conv1", "maxpool1", "conv2"] and "inception4a" not in frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    model.train()
    for seed in range(2):
        loss = nn.functional.cross_entropy(model(randn(4, 3, 64, 64, seed=seed)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    early = [k for k in before if k.split(".")[0] in frozen]
    late = [k for k in before if k.startswith(("inception5b.", "fc.")) and "num_batches" not in k]
    assert early and all(torch.equal(before[k], after[k]) for k in early)  # weights and BN statistics
    assert all(not torch.equal(before[k], after[k]) for k in late)


def test_freeze_unknown_layer():
    with pytest.raises(HistofastError, match="until='Mixed_7a': not a layer of SimpleCNN; its layers are features, "
                                             "classifier"):
        freeze(SimpleCNN(2), "Mixed_7a")


@pytest.mark.gpu
def test_two_level_cuda_matches_cpu():
    torch.manual_seed(0)
    model = two_level_cnn(3, 64, 320, 32, **TINY).eval()
    x = randn(2, 3, 320, 320)
    expected = model(x)
    got = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)  # cuDNN may use TF32
