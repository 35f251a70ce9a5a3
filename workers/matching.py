"""The pieces a matching recipe is made of, each keeping classes independent given the network:

- where each iteration's embedding network comes from (``NetworkSource``): a fresh random
  initialisation (DM), a state drawn from a pool of trained networks (paper 3.4), or none at
  all (matching in pixel space, the paper's appendix B.2);
- how the real and synthetic embeddings of a class are compared: their means (DM), or a
  kernel MMD (linear, which equals the mean loss, or Gaussian with several bandwidths).

Every draw of iteration ``t`` comes from ``derive_seed(seed, "iter", t, ...)``: a resumed
shard draws what an uninterrupted one does.
"""

from __future__ import annotations

import random
from typing import Protocol, Sequence

import torch
from torch import nn

from workers.networks import init_parameters_
from workers.seeding import derive_seed

# Gaussian bandwidths, as multiples of the mean squared distance between a class's real
# embeddings (measured anew every iteration, on the detached real side)
RBF_SCALES = (0.25, 1.0, 4.0)


class NetworkSource(Protocol):
    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> None:
        """Set ``net``'s parameters (in place: a compiled embedding stays valid) for one iteration."""


class RandomNetworks:
    """DM: a fresh random initialisation every iteration, from the iteration's generator."""

    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> None:
        init_parameters_(net, gen)


class PoolNetworks:
    """A state of a trained network every iteration, drawn uniformly from ``states`` (a pool's
    accuracy group) on the host, from (seed, iteration): no device read decides it."""

    def __init__(self, states: Sequence[dict[str, torch.Tensor]], device: torch.device) -> None:
        if not states:
            raise ValueError("the pool group holds no state: choose a group that the pool's states fall in")
        self.states = [{k: v.to(device) for k, v in s.items()} for s in states]

    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> None:
        i = random.Random(derive_seed(seed, "iter", iteration, "network")).randrange(len(self.states))
        net.load_state_dict(self.states[i])  # copies into the network's own tensors and layout


def mmd(real: torch.Tensor, weights: torch.Tensor, syn: torch.Tensor, kernel: str) -> torch.Tensor:
    """Sum over classes of the (biased) MMD² between each class's real embeddings ``real``
    [K, n, D] (rows weighted by ``weights`` [K, n]: 0 for padding) and synthetic ``syn``
    [K, m, D]. ``linear`` is the squared distance of the means, DM's loss."""
    w = weights / weights.sum(dim=1, keepdim=True)
    if kernel == "linear":
        real_mean = (w.unsqueeze(-1) * real).sum(dim=1)
        return ((real_mean - syn.mean(dim=1)) ** 2).sum()
    if kernel != "rbf":
        raise ValueError(f"unknown kernel {kernel!r}; choose linear or rbf")
    rr, rs, ss = (torch.cdist(a, b).square() for a, b in ((real, real), (real, syn), (syn, syn)))
    with torch.no_grad():  # the bandwidths follow the real data, a constant of the loss
        spread = (rr * (w.unsqueeze(2) * w.unsqueeze(1))).sum(dim=(1, 2)).clamp_min(1e-12)[:, None, None]
    total = syn.new_zeros(())
    for scale in RBF_SCALES:
        k = [torch.exp(-d / (scale * spread)) for d in (rr, rs, ss)]
        term_rr = (w.unsqueeze(2) * w.unsqueeze(1) * k[0]).sum(dim=(1, 2))
        term_rs = (w.unsqueeze(2) * k[1]).sum(dim=(1, 2)) / syn.shape[1]
        term_ss = k[2].mean(dim=(1, 2))
        total = total + (term_rr - 2 * term_rs + term_ss).sum()
    return total
