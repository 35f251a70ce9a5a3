"""The evaluation zoo of the DC/DSA/DM papers, built by name.

The architectures follow the small-image versions of the DC/DSA code: grey
28x28 inputs are padded to 32x32 by the first convolution of ConvNet, AlexNet
and VGG, "instance norm" is ``GroupNorm(C, C)``, and the plain (non-BN)
variants use instance norm. Every network has ``embed(x) -> [N, D]`` (the
flattened features the final ``classifier`` reads) and ``forward(x) -> logits``.
Feature sizes are computed from ``im_size``, so every input size the layers
can carry works; one they cannot carry raises a ``ValueError`` naming the layer.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Size = tuple[int, int]

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "sigmoid": nn.Sigmoid,
    "leakyrelu": lambda: nn.LeakyReLU(0.01),
    "swish": nn.SiLU,
}
_NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
_POOLS = ("avgpooling", "maxpooling", "none")


def _shrink(size: Size, where: str, kernel: int, stride: int = 1, padding: int = 0) -> Size:
    """Spatial size after a conv/pool layer; errors when nothing would be left."""
    out = tuple((d + 2 * padding - kernel) // stride + 1 for d in size)
    if min(out) < 1:
        raise ValueError(
            f"{where}: a {size[0]}x{size[1]} feature map is too small for this layer "
            f"(kernel {kernel}, stride {stride}); use larger images or a shallower network"
        )
    return out  # type: ignore[return-value]


def _norm2d(kind: str, channels: int, size: Size, where: str) -> nn.Module:
    if kind == "instancenorm" and size[0] * size[1] == 1:
        raise ValueError(
            f"{where}: instance norm over a 1x1 feature map outputs a constant; "
            "use larger images, a shallower network or a BN variant"
        )
    if kind == "instancenorm":
        return InstanceNorm2d(channels)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":  # normalises over (C, H, W) like LayerNorm, size-agnostic
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    return nn.Identity()


def _channels_last(x: torch.Tensor) -> bool:
    """NHWC in memory (and not also NCHW, as 1x1 maps are)?"""
    try:
        return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # vmap's batched tensors cannot answer: take the generic path
        return False


class InstanceNorm2d(nn.GroupNorm):
    """``GroupNorm(C, C)`` (same parameters, same init) with a fast channels_last path.

    PyTorch's CPU GroupNorm is up to 20x slower on channels_last tensors than on
    contiguous ones, and its avg_pool2d is 10x slower on contiguous ones; this
    path computes the per-(image, channel) statistics on the NHWC view, so a
    whole ConvNet runs channels_last (its first 3-channel convolution is 4x
    faster so). Without autograd it normalises in place (overwriting its input,
    the convolution's output): no fresh activation buffers. Statistics are fp32
    under bf16 autocast, as GroupNorm's are.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not _channels_last(x):
            return super().forward(x)
        n, c, h, w = x.shape
        v = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of the NHWC memory
        if v.dtype != torch.float32:
            v = v.float()
        mean = v.mean(1, keepdim=True)
        inplace = not torch.is_grad_enabled()  # overwrites x, as ReLU(inplace=True) does
        centred = v.sub_(mean) if inplace else v - mean
        scale = self.weight * torch.rsqrt(centred.pow(2).mean(1, keepdim=True) + self.eps)
        out = centred.mul_(scale).add_(self.bias) if inplace else centred * scale + self.bias
        return out.view(n, h, w, c).permute(0, 3, 1, 2)


class _Net(nn.Module):
    """forward = classifier(embed(x)); subclasses define ``embed`` and ``classifier``."""

    classifier: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ConvNet(_Net):
    """``depth`` blocks of conv3x3 -> norm -> act -> pool(2), then a linear classifier."""

    def __init__(self, channels: int, num_classes: int, im_size: Size, *, width: int = 128,
                 depth: int = 3, act: str = "relu", norm: str = "instancenorm",
                 pool: str = "avgpooling") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch = im_size, channels
        for d in range(depth):
            where = f"ConvNet block {d + 1} of {depth} on {im_size[0]}x{im_size[1]} input"
            pad = 3 if channels == 1 and d == 0 else 1  # grey 28x28 -> 32x32, as in DC
            size = _shrink(size, where, 3, padding=pad)
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), _norm2d(norm, width, size, where),
                       _ACTS[act]()]
            if pool != "none":
                size = _shrink(size, where + " (pooling)", 2, 2)
                layers.append(nn.AvgPool2d(2, 2) if pool == "avgpooling" else nn.MaxPool2d(2, 2))
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size[0] * size[1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class MLP(_Net):
    """Two hidden layers of 128 units with ReLU."""

    def __init__(self, channels: int, num_classes: int, im_size: Size) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(channels * im_size[0] * im_size[1], 128)
        self.fc_2 = nn.Linear(128, 128)
        self.classifier = nn.Linear(128, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc_2(F.relu(self.fc_1(x.flatten(1)))))


class LeNet(_Net):
    def __init__(self, channels: int, num_classes: int, im_size: Size) -> None:
        super().__init__()
        where = f"LeNet on {im_size[0]}x{im_size[1]} input"
        pad = 2 if channels == 1 else 0
        size = _shrink(_shrink(im_size, where, 5, padding=pad), where, 2, 2)
        size = _shrink(_shrink(size, where, 5), where, 2, 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        self.fc_1 = nn.Linear(16 * size[0] * size[1], 120)
        self.fc_2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return F.relu(self.fc_2(F.relu(self.fc_1(x))))


class AlexNet(_Net):
    """Five convolutions (128-192-256-192-192), three max-pools; optional BatchNorm."""

    def __init__(self, channels: int, num_classes: int, im_size: Size, *, batchnorm: bool = False) -> None:
        super().__init__()
        where = f"AlexNet on {im_size[0]}x{im_size[1]} input"
        # (out channels, kernel, padding, pool after)
        spec = [(128, 5, 4 if channels == 1 else 2, True), (192, 5, 2, True),
                (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True)]
        layers: list[nn.Module] = []
        size, in_ch = im_size, channels
        for out_ch, k, pad, pool in spec:
            size = _shrink(size, where, k, padding=pad)
            layers += [nn.Conv2d(in_ch, out_ch, k, padding=pad)]
            layers += [nn.BatchNorm2d(out_ch)] if batchnorm else []
            layers += [nn.ReLU(inplace=True)]
            if pool:
                size = _shrink(size, where, 2, 2)
                layers.append(nn.MaxPool2d(2, 2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * size[0] * size[1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(_Net):
    """VGG11 for small images: conv3x3 -> norm -> ReLU, five max-pools."""

    def __init__(self, channels: int, num_classes: int, im_size: Size, *, norm: str = "instancenorm") -> None:
        super().__init__()
        where = f"VGG11 on {im_size[0]}x{im_size[1]} input"
        layers: list[nn.Module] = []
        size, in_ch = im_size, channels
        for i, item in enumerate(_VGG11):
            if item == "M":
                size = _shrink(size, where, 2, 2)
                layers.append(nn.MaxPool2d(2, 2))
                continue
            pad = 3 if channels == 1 and i == 0 else 1
            size = _shrink(size, where, 3, padding=pad)
            layers += [nn.Conv2d(in_ch, item, 3, padding=pad), _norm2d(norm, item, size, where),
                       nn.ReLU(inplace=True)]
            in_ch = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * size[0] * size[1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class BasicBlock(nn.Module):
    """ResNet basic block. ``avgpool`` downsamples with conv(stride 1) + avg-pool (the *_AP nets)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, size: Size, where: str,
                 avgpool: bool) -> None:
        super().__init__()
        self.pool = stride if avgpool else 1
        conv_stride = 1 if avgpool else stride
        mid_size = _shrink(size, where, 3, conv_stride, 1)
        out_size = _shrink(mid_size, where, 2, 2) if avgpool and stride != 1 else mid_size
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, conv_stride, 1, bias=False)
        self.bn1 = _norm2d(norm, out_ch, mid_size, where)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = _norm2d(norm, out_ch, out_size, where)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            down = [nn.Conv2d(in_ch, out_ch, 1, 1, bias=False), nn.AvgPool2d(stride, stride)] if avgpool \
                else [nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)]
            self.shortcut = nn.Sequential(*down, _norm2d(norm, out_ch, out_size, where))
        self.out_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.pool != 1:
            out = F.avg_pool2d(out, self.pool, self.pool)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(_Net):
    """ResNet-18 for small images (3x3 stem, no stem pooling).

    Default: strided convolutions then global average pooling (the DC code's
    ``avg_pool2d(out, 4)`` at 32x32). ``avgpool=True`` is the *_AP variant of the
    DC appendix: downsampling by average pooling and a classifier on the
    flattened final feature map.
    """

    def __init__(self, channels: int, num_classes: int, im_size: Size, *, norm: str = "instancenorm",
                 avgpool: bool = False) -> None:
        super().__init__()
        where = f"ResNet18 on {im_size[0]}x{im_size[1]} input"
        size = _shrink(im_size, where, 3, 1, 1)
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.bn1 = _norm2d(norm, 64, size, where)
        blocks: list[nn.Module] = []
        in_ch = 64
        for out_ch, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
            block = BasicBlock(in_ch, out_ch, stride, norm, size, where, avgpool)
            blocks.append(block)
            size, in_ch = block.out_size, out_ch
        self.layers = nn.Sequential(*blocks)
        self.global_pool = not avgpool
        self.classifier = nn.Linear(512 if self.global_pool else 512 * size[0] * size[1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        if self.global_pool:
            out = F.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)


# ---------------------------------------------------------------- names


@dataclass(frozen=True)
class ConvNetSpec:
    width: int = 128
    depth: int | None = None  # None: 3 up to 32x32, 4 above
    act: str = "relu"
    norm: str = "instancenorm"
    pool: str = "avgpooling"


# The ConvNet name grammar, its one source: "ConvNet" then any of D<depth>, W<width> and one
# word per field below (longest first where one word starts another: ASwish before AS).
CONVNET_WORDS: dict[str, dict[str, str]] = {
    "act": {"ASwish": "swish", "AS": "sigmoid", "AR": "relu", "AL": "leakyrelu"},
    "norm": {"NN": "none", "BN": "batchnorm", "LN": "layernorm", "IN": "instancenorm", "GN": "groupnorm"},
    "pool": {"NP": "none", "MP": "maxpooling", "AP": "avgpooling"},
}
_CONVNET_NUMBERS = {"D": "depth", "W": "width"}
# (regex, field, value or None to parse the int), in the order they are tried
_CONVNET_TOKENS: tuple[tuple[str, str, str | None], ...] = (
    *((rf"{letter}(\d+)", name, None) for letter, name in _CONVNET_NUMBERS.items()),
    *((re.escape(word), name, value) for name, words in CONVNET_WORDS.items() for word, value in words.items()),
)


def convnet_name(*, depth: int | None = None, width: int | None = None, act: str | None = None,
                 norm: str | None = None, pool: str | None = None) -> str:
    """The registry name of a ConvNet with these fields (None: the default), e.g. ConvNetD3W64ARBNMP."""
    words = {name: {value: word for word, value in table.items()} for name, table in CONVNET_WORDS.items()}
    chosen = {"act": act, "norm": norm, "pool": pool}
    return ("ConvNet" + (f"D{depth}" if depth is not None else "") + (f"W{width}" if width is not None else "")
            + "".join(words[name][value] for name, value in chosen.items() if value is not None))


_OTHERS: dict[str, Callable[[int, int, Size], nn.Module]] = {
    "MLP": MLP,
    "LeNet": LeNet,
    "AlexNet": AlexNet,
    "AlexNetBN": lambda c, n, s: AlexNet(c, n, s, batchnorm=True),
    "VGG11": VGG11,
    "VGG11BN": lambda c, n, s: VGG11(c, n, s, norm="batchnorm"),
    "ResNet18": ResNet18,
    "ResNet18BN": lambda c, n, s: ResNet18(c, n, s, norm="batchnorm"),
    "ResNet18_AP": lambda c, n, s: ResNet18(c, n, s, avgpool=True),
    "ResNet18BN_AP": lambda c, n, s: ResNet18(c, n, s, norm="batchnorm", avgpool=True),
}

# Every name the registry builds, one example per word of the grammar (the words combine).
NETWORK_NAMES: tuple[str, ...] = (
    "ConvNet", *(convnet_name(depth=d) for d in range(1, 6)), *(convnet_name(width=w) for w in (32, 64, 128, 256)),
    *(convnet_name(**{name: value}) for name, words in CONVNET_WORDS.items() for value in words.values()),
    *_OTHERS,
)


def _unknown(name: str, why: str = "") -> ValueError:
    near = difflib.get_close_matches(name, NETWORK_NAMES, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else "."
    return ValueError(
        f"unknown network {name!r}{why}{hint} Valid names: {', '.join(NETWORK_NAMES)} "
        "(ConvNet suffixes combine, e.g. ConvNetD4BN)"
    )


def check_network_name(name: str) -> str:
    """``name`` if ``build_network`` builds it, else the one error that lists the valid names."""
    if name not in _OTHERS:
        parse_convnet(name)
    return name


def parse_convnet(name: str) -> ConvNetSpec:
    """``ConvNet`` plus any of D<depth>, W<width>, AS/AR/AL/ASwish, NN/BN/LN/IN/GN, NP/MP/AP."""
    if not name.startswith("ConvNet"):
        raise _unknown(name)
    rest, fields = name[len("ConvNet"):], {}
    while rest:
        for pattern, field, value in _CONVNET_TOKENS:
            m = re.match(pattern, rest)
            if m:
                break
        else:
            raise _unknown(name, f" (cannot read {rest!r})")
        if field in fields:
            raise _unknown(name, f" (sets {field} twice)")
        fields[field] = int(m.group(1)) if value is None else value
        rest = rest[m.end():]
    if fields.get("depth", 1) < 1 or fields.get("width", 1) < 1:
        raise _unknown(name, " (depth and width must be at least 1)")
    return ConvNetSpec(**fields)


def uses_batchnorm(name: str) -> bool:
    """Whether the network couples the images of a batch through BatchNorm statistics."""
    if name in _OTHERS:
        return "BN" in name
    return parse_convnet(name).norm == "batchnorm"


def build_network(name: str, channels: int, num_classes: int, im_size: tuple[int, int]) -> nn.Module:
    """The network ``name`` for ``channels`` x ``im_size`` inputs and ``num_classes`` outputs."""
    if channels < 1 or num_classes < 1:
        raise ValueError(f"channels ({channels}) and num_classes ({num_classes}) must be positive")
    if len(im_size) != 2 or min(im_size) < 1:
        raise ValueError(f"im_size must be (H, W) with positive sides, got {im_size!r}")
    size: Size = (int(im_size[0]), int(im_size[1]))
    if name in _OTHERS:
        return _OTHERS[name](channels, num_classes, size)
    spec = parse_convnet(name)
    depth = spec.depth if spec.depth is not None else (3 if max(size) <= 32 else 4)
    return ConvNet(channels, num_classes, size, width=spec.width, depth=depth, act=spec.act,
                   norm=spec.norm, pool=spec.pool)


# ---------------------------------------------------------------- init

_AFFINE = (nn.modules.conv._ConvNd, nn.Linear)
_NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _draw(param: torch.Tensor, fill: Callable[[torch.Tensor], object]) -> None:
    """Fill ``param`` in its logical (contiguous) order whatever its memory format, so a
    channels_last network draws the same weights as a contiguous one."""
    if param.is_contiguous():
        fill(param)
    else:
        staged = torch.empty(param.shape, dtype=param.dtype, device=param.device)
        fill(staged)
        param.copy_(staged)


@torch.no_grad()
def init_parameters_(net: nn.Module, generator: torch.Generator) -> None:
    """Redraw every parameter as the layers' default ``reset_parameters``, from ``generator`` only.

    Same generator state -> bit-identical parameters. In place, so a compiled
    module wrapping ``net`` stays valid.
    """
    first = next(net.parameters(), None)
    if first is not None and first.device.type != generator.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the network is on {first.device}; "
            "make the generator on the network's device"
        )
    covered: set[int] = set()
    for m in net.modules():
        if isinstance(m, _AFFINE):
            _draw(m.weight, lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator))
            if m.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, _NORM):
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.reset_running_stats()
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.fill_(0.0)
        else:
            continue
        covered.update(id(p) for p in m.parameters(recurse=False))
    missed = [n for n, p in net.named_parameters() if id(p) not in covered]
    if missed:
        raise TypeError(f"init_parameters_ does not know how to draw {missed}")
