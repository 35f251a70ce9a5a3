"""What one image costs a network, counted from the network itself: multiply-adds, the
activations every layer reads and writes, and the memory a training step keeps alive.

Used to size work to memory (how many evaluation networks train together) and by the
GPU cost model (``benchmarks/gpu_cost_model.py``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from workers.networks import build_network

FP32_BYTES = 4
# A training step keeps every layer's output for the backward and, at the backward's peak,
# about as much again in gradients: an upper estimate, not a measurement.
TRAINING_KEEP_FACTOR = 2


@dataclass(frozen=True)
class LayerCost:
    kind: str  # conv | linear | norm | act | pool | other
    macs: int
    in_elements: int
    out_elements: int


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.SiLU)):
        return "act"
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        return "pool"
    return "other"


@functools.lru_cache(maxsize=64)
def layer_costs(model: str, shape: tuple[int, int, int], num_classes: int = 10,
                embed_only: bool = True) -> tuple[LayerCost, ...]:
    """The leaf layers one image goes through, in order (``embed`` alone, or the whole forward)."""
    net = build_network(model, shape[0], num_classes, shape[1:])
    costs: list[LayerCost] = []

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        macs = 0
        if isinstance(m, nn.Conv2d):
            macs = out.numel() * m.in_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            macs = out.numel() * m.in_features
        costs.append(LayerCost(_kind(m), macs, inputs[0].numel(), out.numel()))

    skip = getattr(net, "classifier", None) if embed_only else None
    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children()) and m is not skip]
    with torch.no_grad():
        x = torch.zeros(1, *shape)
        net.embed(x) if embed_only else net(x)
    for h in handles:
        h.remove()
    return tuple(costs)


def training_bytes_per_image(model: str, shape: tuple[int, int, int], num_classes: int) -> int:
    """Memory one image takes in a training step of ``model`` (fp32): an upper estimate."""
    kept = shape[0] * shape[1] * shape[2] + sum(c.out_elements for c in layer_costs(model, shape, num_classes, False))
    return TRAINING_KEEP_FACTOR * FP32_BYTES * kept
