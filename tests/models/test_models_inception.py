"""GoogLeNet and InceptionV3: torchvision's state-dict layout and parameter counts, output shapes and aux
outputs, transform_input, input-size checks, argument validation and seeded init."""
from __future__ import annotations

import pytest
import torch

from histofast.errors import HistofastError
from histofast.models.googlenet import GoogLeNet, GoogLeNetOutputs
from histofast.models.inception import InceptionOutputs, InceptionV3


@pytest.fixture(scope="module")
def googlenet_aux() -> GoogLeNet:
    torch.manual_seed(0)
    return GoogLeNet(num_classes=5, aux_logits=True)


@pytest.fixture(scope="module")
def inception_aux() -> InceptionV3:
    torch.manual_seed(0)
    return InceptionV3(num_classes=5, aux_logits=True)


def images(size: int | tuple[int, int], batch: int = 2) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))


def on_meta(cls: type[torch.nn.Module], **options: object) -> torch.nn.Module:
    """A model with shapes but no data (no init cost): for layout and pre-forward checks."""
    with torch.device("meta"):
        return cls(**options)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_torchvision():
    # torchvision's weights metadata ("num_params"): GoogLeNet without aux heads, Inception3 with its aux head.
    assert num_params(on_meta(GoogLeNet)) == 6_624_904
    assert num_params(on_meta(InceptionV3, aux_logits=True)) == 27_161_264


@pytest.mark.parametrize("key, shape", [
    ("conv1.conv.weight", (64, 3, 7, 7)),
    ("conv1.bn.running_var", (64,)),
    ("conv1.bn.num_batches_tracked", ()),
    ("conv3.conv.weight", (192, 64, 3, 3)),
    ("inception3a.branch1.conv.weight", (64, 192, 1, 1)),
    ("inception3a.branch3.1.conv.weight", (32, 16, 3, 3)),  # torchvision's "5×5" branch is 3×3
    ("inception4e.branch4.1.bn.weight", (128,)),
    ("inception5b.branch2.1.conv.weight", (384, 192, 3, 3)),
    ("aux1.conv.conv.weight", (128, 512, 1, 1)),
    ("aux2.conv.conv.weight", (128, 528, 1, 1)),
    ("aux1.fc1.weight", (1024, 2048)),
    ("aux1.fc2.weight", (1000, 1024)),
    ("aux2.fc2.bias", (1000,)),
    ("fc.weight", (1000, 1024)),
    ("fc.bias", (1000,)),
])
def test_googlenet_state_dict_layout(key, shape):
    assert tuple(on_meta(GoogLeNet, aux_logits=True).state_dict()[key].shape) == shape


@pytest.mark.parametrize("key, shape", [
    ("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)),
    ("Conv2d_4a_3x3.bn.running_mean", (192,)),
    ("Mixed_5b.branch5x5_2.conv.weight", (64, 48, 5, 5)),
    ("Mixed_5d.branch_pool.conv.weight", (64, 288, 1, 1)),
    ("Mixed_6a.branch3x3.conv.weight", (384, 288, 3, 3)),
    ("Mixed_6b.branch7x7_2.conv.weight", (128, 128, 1, 7)),
    ("Mixed_6e.branch7x7dbl_4.conv.weight", (192, 192, 7, 1)),
    ("Mixed_7a.branch7x7x3_4.conv.weight", (192, 192, 3, 3)),
    ("Mixed_7b.branch3x3dbl_1.conv.weight", (448, 1280, 1, 1)),
    ("Mixed_7c.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
    ("AuxLogits.conv0.conv.weight", (128, 768, 1, 1)),
    ("AuxLogits.conv1.conv.weight", (768, 128, 5, 5)),
    ("AuxLogits.fc.weight", (1000, 768)),
    ("fc.weight", (1000, 2048)),
])
def test_inception_state_dict_layout(key, shape):
    assert tuple(on_meta(InceptionV3, aux_logits=True).state_dict()[key].shape) == shape


def test_aux_heads_only_with_aux_logits():
    assert not any(k.startswith(("aux1.", "aux2.")) for k in on_meta(GoogLeNet).state_dict())
    assert not any(k.startswith("AuxLogits.") for k in on_meta(InceptionV3).state_dict())
    # a state dict with aux heads loads strictly into a model with aux heads, not into one without
    state = on_meta(GoogLeNet, num_classes=3, aux_logits=True).state_dict()
    on_meta(GoogLeNet, num_classes=3, aux_logits=True).load_state_dict(state)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        on_meta(GoogLeNet, num_classes=3).load_state_dict(state)


@pytest.mark.parametrize("size", [15, 32, 64, 96, (40, 72), 224])
def test_googlenet_logits_shape(size, googlenet_aux):
    googlenet_aux.eval()
    with torch.no_grad():
        out = googlenet_aux(images(size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [75, 96, (80, 120), 299])
def test_inception_logits_shape(size, inception_aux):
    inception_aux.eval()
    with torch.no_grad():
        out = inception_aux(images(size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("num_classes", [1, 7])
def test_num_classes_sets_the_heads(num_classes):
    model = GoogLeNet(num_classes=num_classes, aux_logits=True).train()
    assert [t.shape for t in model(images(32))] == [(2, num_classes)] * 3
    assert model.num_classes == num_classes
    model = on_meta(InceptionV3, num_classes=num_classes, aux_logits=True)
    assert model.fc.out_features == model.AuxLogits.fc.out_features == model.num_classes == num_classes


@pytest.mark.parametrize("size", [15, 64])
def test_googlenet_training_outputs(size, googlenet_aux):
    googlenet_aux.train()
    out = googlenet_aux(images(size))
    assert isinstance(out, GoogLeNetOutputs) and out._fields == ("logits", "aux_logits2", "aux_logits1")
    assert all(isinstance(t, torch.Tensor) and t.shape == (2, 5) for t in out)
    assert len(GoogLeNet.aux_weights) == len(out) - 1 == 2
    loss = sum(t.square().mean() for t in out)
    loss.backward()  # every head is connected to the graph
    assert googlenet_aux.aux1.fc2.weight.grad is not None and googlenet_aux.aux2.fc2.weight.grad is not None
    googlenet_aux.zero_grad(set_to_none=True)


def test_inception_training_outputs(inception_aux):
    inception_aux.train()
    out = inception_aux(images(299))
    assert isinstance(out, InceptionOutputs) and out._fields == ("logits", "aux_logits")
    assert all(isinstance(t, torch.Tensor) and t.shape == (2, 5) for t in out)
    assert not torch.equal(out.logits, out.aux_logits)
    assert len(InceptionV3.aux_weights) == len(out) - 1 == 1


def test_training_without_aux_heads_returns_logits(googlenet_aux, inception_aux):
    for model, size in ((googlenet_aux, 32), (inception_aux, 75)):  # no aux output: the plain minimum applies
        model.train()
        model.aux_logits = False
        try:
            out = model(images(size))
        finally:
            model.aux_logits = True
        assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    assert isinstance(GoogLeNet(num_classes=3).train()(images(32)), torch.Tensor)


def torchvision_transform_input(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_transform_input``, verbatim."""
    x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x_ch0, x_ch1, x_ch2), 1)


@pytest.mark.parametrize("transform", [False, True])
def test_transform_input_matches_torchvision(transform, googlenet_aux, inception_aux):
    x = images(75)
    for model, first in ((googlenet_aux, googlenet_aux.conv1), (inception_aux, inception_aux.Conv2d_1a_3x3)):
        seen = []
        hook = first.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0]))
        model.eval()
        model.transform_input = transform
        try:
            with torch.no_grad():
                model(x)
        finally:
            hook.remove()
            model.transform_input = False
        torch.testing.assert_close(seen[0], torchvision_transform_input(x) if transform else x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls, size, fragment", [
    (GoogLeNet, 14, "images of 14×14 pixels: GoogLeNet needs at least 15×15"),
    (GoogLeNet, (14, 64), "images of 14×64 pixels"),
    (InceptionV3, 64, "images of 64×64 pixels: InceptionV3 needs at least 75×75 (299×299 with aux_logits in training)"),
    (InceptionV3, (299, 74), "images of 299×74 pixels"),
])
def test_too_small_images(cls, size, fragment):
    model = on_meta(cls, num_classes=2, aux_logits=True)  # the check comes before any layer runs
    for mode in (True, False):
        with pytest.raises(HistofastError) as info:
            model.train(mode)(images(size))
        assert fragment in str(info.value)


def test_inception_aux_needs_299_in_training(inception_aux):
    inception_aux.train()
    before = inception_aux.Conv2d_1a_3x3.bn.running_mean.clone()
    with pytest.raises(HistofastError, match="images of 298×298 pixels: .*299×299 with aux_logits in training"):
        inception_aux(images(298))
    with pytest.raises(HistofastError, match="images of 299×298 pixels"):
        inception_aux(images((299, 298)))
    # checked before any layer runs: the BatchNorm statistics did not move
    assert torch.equal(inception_aux.Conv2d_1a_3x3.bn.running_mean, before)
    assert InceptionV3.min_size == 75 and InceptionV3.min_size_aux == 299 and GoogLeNet.min_size == 15


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (3, 64, 64), (2, 4, 299, 299)])
def test_wrong_image_shape(shape):
    x = torch.randn(shape)
    for model in (on_meta(GoogLeNet, num_classes=2).eval(), on_meta(InceptionV3, num_classes=2).eval()):
        with pytest.raises(HistofastError, match=r"expected \(B, 3, H, W\)"):
            model(x)


@pytest.mark.parametrize("cls", [GoogLeNet, InceptionV3])
@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "10"])
def test_num_classes_is_validated(cls, bad):
    with pytest.raises(HistofastError, match=rf"num_classes={bad!r}: must be a positive integer"):
        cls(num_classes=bad)


def test_dropout_options():
    model = on_meta(GoogLeNet, aux_logits=True, dropout=0.1, dropout_aux=0.6)
    assert (model.dropout.p, model.aux1.dropout.p, model.aux2.dropout.p) == (0.1, 0.6, 0.6)
    defaults = on_meta(GoogLeNet, aux_logits=True)
    assert (defaults.dropout.p, defaults.aux1.dropout.p) == (0.2, 0.7)
    assert on_meta(InceptionV3, dropout=0.3).dropout.p == 0.3 and on_meta(InceptionV3).dropout.p == 0.5


@pytest.mark.parametrize("cls", [GoogLeNet, InceptionV3])
def test_init_is_seeded(cls):
    def seeded(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return cls(num_classes=3, aux_logits=True).state_dict()

    a, b, c = seeded(7), seeded(7), seeded(8)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_init_distributions(googlenet_aux, inception_aux):
    g, v3 = googlenet_aux, inception_aux  # weights as initialised: no test takes an optimizer step
    assert abs(g.inception4e.branch2[1].conv.weight.std().item() - 0.01) < 1e-3
    assert abs(g.fc.weight.std().item() - 0.01) < 1e-3
    assert torch.equal(g.conv1.bn.weight, torch.ones(64)) and torch.equal(g.conv1.bn.bias, torch.zeros(64))
    assert abs(v3.Mixed_7c.branch3x3dbl_2.conv.weight.std().item() - 0.1) < 5e-3
    assert abs(v3.AuxLogits.fc.weight.std().item() - 0.001) < 1e-4  # torchvision's fc.stddev
    assert torch.equal(v3.Mixed_5b.branch_pool.bn.weight, torch.ones(32))
