"""NCFM's learned frequency distribution: a sampling network per class, trained adversarially.

NCFM (Wang et al., CVPR 2025) draws the frequencies of its characteristic-function distance from
a small network fed with Gaussian noise (3 layers: linear D->D, batch norm, LeakyReLU(0.2), tanh
last) and trains it to maximise the distance while the images minimise it (the min-max step:
``ascend``). NCFM has one network for all classes; here every class has its own (the weights
are batched [K, ...]), so that a class's frequencies depend on its own images only and a shard
of any grouping condenses each class as it would alone. NCFM feeds 256 noise rows and repeats
each output 16 times to 4,096 frequencies; the distance is a mean over frequencies, so the 256
distinct rows give the same value at 1/16 of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.seeding import derive_seed, generator

LAYERS = 3
ROWS = 256  # noise rows per class and iteration (NCFM: 4,096 frequencies / 16 repeats)
# NCFM's optimiser for the sampling network: SGD, lr 1e-3, the images' momentum 0.5, weight decay 0.01
LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.5, 0.01
_BN_EPS = 1e-5


class FrequencySampler(nn.Module):
    """One sampling network per class of ``class_ids`` over ``dim``-dimensional embeddings, each
    initialised from (seed, its class): a class's network is the same in any grouping."""

    def __init__(self, class_ids: Sequence[int], dim: int, seed: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.class_ids = [int(c) for c in class_ids]
        bound = 1 / math.sqrt(dim)  # nn.Linear's initialisation

        def uniform(c: int, shape: tuple[int, ...]) -> torch.Tensor:
            gen = generator(derive_seed(seed, "sampler", c, *shape))
            return (torch.rand(LAYERS, *shape, generator=gen) * 2 - 1) * bound

        self.weight = nn.Parameter(torch.stack([uniform(c, (dim, dim)) for c in self.class_ids], 1).to(device))
        self.bias = nn.Parameter(torch.stack([uniform(c, (1, dim)) for c in self.class_ids], 1).to(device))
        k = len(self.class_ids)
        self.gamma = nn.Parameter(torch.ones(LAYERS, k, 1, dim, device=device))  # batch norm's affine
        self.beta = nn.Parameter(torch.zeros(LAYERS, k, 1, dim, device=device))

    def forward(self, noise: Callable[[int], torch.Generator]) -> torch.Tensor:
        """[K, ROWS, D] frequencies from this iteration's noise, each class's from ``noise(class id)``."""
        d, device = self.weight.shape[-1], self.weight.device
        a = torch.stack([torch.randn(ROWS, d, generator=noise(c), device=device) for c in self.class_ids])
        for layer in range(LAYERS):
            a = torch.baddbmm(self.bias[layer], a, self.weight[layer])
            mean, var = a.mean(dim=1, keepdim=True), a.var(dim=1, unbiased=False, keepdim=True)
            a = (a - mean) / torch.sqrt(var + _BN_EPS) * self.gamma[layer] + self.beta[layer]  # per class's rows
            a = F.leaky_relu(a, 0.2) if layer < LAYERS - 1 else torch.tanh(a)
        return a


def sampler_optimizer(sampler: FrequencySampler) -> torch.optim.Optimizer:
    return torch.optim.SGD(sampler.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def ascend(sampler: FrequencySampler, optimizer: torch.optim.Optimizer) -> None:
    """The sampler's half of the min-max step: the gradients that the loss's backward left on it,
    negated, so that its step raises the distance the images' step lowers."""
    for p in sampler.parameters():
        if p.grad is not None:
            p.grad.neg_()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
