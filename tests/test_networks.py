"""The network zoo: every name builds, shapes agree, init is generator-driven and exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.networks import NETWORK_NAMES, InstanceNorm2d, build_network, init_parameters_, uses_batchnorm

SIZES = [(1, (28, 28)), (3, (32, 32))]


def _check_shapes(net: nn.Module, channels: int, im_size: tuple[int, int], classes: int = 7) -> None:
    x = torch.randn(2, channels, *im_size)
    logits, emb = net(x), net.embed(x)
    assert logits.shape == (2, classes)
    assert emb.shape == (2, net.classifier.in_features)
    # forward is the classifier applied to embed
    torch.testing.assert_close(net.classifier(emb), logits)


@pytest.mark.parametrize("name", NETWORK_NAMES)
@pytest.mark.parametrize("channels,im_size", SIZES)
def test_every_name_builds_and_runs(name: str, channels: int, im_size: tuple[int, int]) -> None:
    _check_shapes(build_network(name, channels, 7, im_size), channels, im_size)


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetD4", "ConvNetBN", "AlexNet", "ResNet18BN_AP"])
def test_64x64_and_non_square(name: str) -> None:
    _check_shapes(build_network(name, 3, 7, (64, 64)), 3, (64, 64))
    _check_shapes(build_network(name, 1, 7, (40, 48)), 1, (40, 48))


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_convnet_defaults_follow_the_paper() -> None:
    net = build_network("ConvNet", 3, 10, (32, 32))
    convs = _convs(net)
    assert len(convs) == 3 and all(c.out_channels == 128 for c in convs)
    assert [type(m) for m in net.features[:4]] == [nn.Conv2d, InstanceNorm2d, nn.ReLU, nn.AvgPool2d]
    assert isinstance(net.features[1], nn.GroupNorm) and net.features[1].num_groups == 128  # instance norm
    assert net.classifier.in_features == 128 * 4 * 4
    assert len(_convs(build_network("ConvNet", 3, 10, (64, 64)))) == 4
    # grey 28x28 is padded to 32x32 by the first convolution, as in the DC code
    assert build_network("ConvNet", 1, 10, (28, 28)).classifier.in_features == 128 * 4 * 4


def test_convnet_on_8x8_digits() -> None:
    for channels in (1, 3):
        net = build_network("ConvNet", channels, 10, (8, 8))
        assert len(_convs(net)) == 3
        _check_shapes(net, channels, (8, 8), classes=10)


@pytest.mark.parametrize("name,kind,check", [
    ("ConvNetAS", nn.Sigmoid, None), ("ConvNetAL", nn.LeakyReLU, None), ("ConvNetMP", nn.MaxPool2d, None),
    ("ConvNetBN", nn.BatchNorm2d, None), ("ConvNetLN", nn.GroupNorm, lambda m: m.num_groups == 1),
    ("ConvNetGN", nn.GroupNorm, lambda m: m.num_groups == 4),
])
def test_convnet_variants_use_their_layers(name: str, kind: type, check) -> None:
    mods = [m for m in build_network(name, 3, 10, (32, 32)).modules() if isinstance(m, kind)]
    assert len(mods) == 3 and all(check is None or check(m) for m in mods)


def test_convnet_variants_without_pooling_or_norm() -> None:
    np_net = build_network("ConvNetNP", 3, 10, (16, 16))
    assert not any(isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) for m in np_net.modules())
    assert np_net.classifier.in_features == 128 * 16 * 16
    nn_net = build_network("ConvNetNN", 3, 10, (16, 16))
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in nn_net.modules())


def test_convnet_suffixes_combine() -> None:
    net = build_network("ConvNetD2W32BN", 3, 5, (32, 32))
    convs = _convs(net)
    assert len(convs) == 2 and all(c.out_channels == 32 for c in convs)
    assert uses_batchnorm("ConvNetD2W32BN")
    assert net.classifier.in_features == 32 * 8 * 8


@pytest.mark.parametrize("name", ["Resnet18", "ConvNetXYZ", "ConvNetD3D4", "ConvNetD0", "", "VGG16"])
def test_unknown_names_list_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match="[Vv]alid names: .*ConvNet.*ResNet18"):
        build_network(name, 3, 10, (32, 32))
    with pytest.raises(ValueError, match="unknown network"):
        uses_batchnorm(name)


@pytest.mark.parametrize("name,channels,im_size", [
    ("ConvNetD6", 3, (32, 32)), ("ConvNetD4", 3, (8, 8)), ("ConvNetD4BN", 3, (8, 8)),
    ("LeNet", 3, (8, 8)), ("VGG11", 3, (8, 8)), ("ResNet18", 3, (8, 8)),
])
def test_too_small_input_errors_clearly(name: str, channels: int, im_size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=rf"{name[:5]}.*8x8|{name[:5]}.*32x32"):
        build_network(name, channels, 10, im_size)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="channels"):
        build_network("ConvNet", 0, 10, (32, 32))
    with pytest.raises(ValueError, match="im_size"):
        build_network("ConvNet", 3, 10, (32,))


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_uses_batchnorm_matches_the_layers(name: str) -> None:
    net = build_network(name, 3, 10, (32, 32))
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert uses_batchnorm(name) == has_bn


def _state(net: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in net.state_dict().values()]


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetBN", "AlexNetBN", "ResNet18BN_AP", "LeNet", "MLP"])
def test_init_is_the_default_init_drawn_from_the_generator(name: str) -> None:
    torch.manual_seed(123)
    default = build_network(name, 3, 10, (32, 32))
    net = build_network(name, 3, 10, (32, 32))
    init_parameters_(net, torch.Generator().manual_seed(123))
    for a, b in zip(_state(default), _state(net)):
        assert torch.equal(a, b)


def test_init_same_seed_identical_other_seed_different() -> None:
    net = build_network("ConvNetBN", 3, 10, (32, 32))
    init_parameters_(net, torch.Generator().manual_seed(5))
    first = _state(net)
    # disturb everything, including BN running statistics and affine weights
    net.train()
    net(torch.randn(4, 3, 32, 32))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    init_parameters_(net, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, _state(net)))
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    init_parameters_(net, torch.Generator().manual_seed(6))
    conv = _convs(net)[0]
    assert not torch.equal(conv.weight, first[0])


def test_init_does_not_touch_the_global_stream() -> None:
    net = build_network("ConvNet", 3, 10, (32, 32))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    init_parameters_(net, torch.Generator().manual_seed(9))
    assert torch.equal(torch.rand(3), expected)


def test_init_refuses_unknown_parameterised_modules() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.PReLU())
    with pytest.raises(TypeError, match="does not know"):
        init_parameters_(net, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,channels,im_size", [("ConvNet", 3, (32, 32)), ("ConvNet", 1, (28, 28)),
                                                   ("ConvNetBN", 3, (16, 16)), ("AlexNet", 3, (32, 32))])
def test_channels_last_draws_the_same_network_and_embeds_the_same(name, channels, im_size) -> None:
    nchw = build_network(name, channels, 10, im_size)
    nhwc = build_network(name, channels, 10, im_size).to(memory_format=torch.channels_last)
    init_parameters_(nchw, torch.Generator().manual_seed(3))
    init_parameters_(nhwc, torch.Generator().manual_seed(3))
    for a, b in zip(nchw.parameters(), nhwc.parameters()):
        assert torch.equal(a, b)  # drawn in logical order, not memory order
    x = torch.randn(6, channels, *im_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the in-place inference path
        expected = nchw.embed(x)
        got = nhwc.embed(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if name == "AlexNet":  # max pooling: a 1e-6 change may move the argmax, and the gradient with it
        return
    # The gradient in float64: this loss amplifies float32 rounding (instance norm of nearly flat
    # maps), so that the kernels an ISA picks for each layout would decide the check in float32.
    x, nchw, nhwc = x.double(), nchw.double(), nhwc.double()
    xa, xb = x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last).requires_grad_()
    nchw.embed(xa).pow(2).sum().backward()
    nhwc.embed(xb).pow(2).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5 * float(xa.grad.abs().max()))


def test_instance_norm_channels_last_is_instance_norm_under_bf16_autocast() -> None:
    norm = InstanceNorm2d(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 8, 5, 7).to(torch.bfloat16)
    expected = F.group_norm(x.float(), 8, norm.weight, norm.bias, norm.eps)
    with torch.no_grad():
        got = norm(x.contiguous(memory_format=torch.channels_last))
    assert got.dtype == torch.float32  # statistics in fp32, as GroupNorm under autocast
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
