"""The pieces a matching recipe is made of, each keeping classes independent given the network:

- where each iteration's embedding network comes from (``NetworkSource``): a fresh random
  initialisation (DM), a state drawn from a pool of trained networks (paper 3.4; IDM), a
  blend of one pool network's initial and final states (DANCE, NCFM), or none at all
  (matching in pixel space, the paper's appendix B.2);
- how the real and synthetic embeddings of a class are compared: their means (DM), a kernel
  MMD (linear, which equals the mean loss, or Gaussian with several bandwidths: M3D), or the
  distance of their empirical characteristic functions (NCFM).

Every draw of iteration ``t`` comes from ``derive_seed(seed, "iter", t, ...)``: a resumed
shard draws what an uninterrupted one does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from workers.networks import init_parameters_
from workers.seeding import derive_seed

# Gaussian bandwidths, as multiples of the mean squared distance between a class's real
# embeddings (measured anew every iteration, on the detached real side)
RBF_SCALES = (0.25, 1.0, 4.0)
# NCFM's defaults (its released CIFAR-10 configs): 4,096 Gaussian frequencies, amplitude and
# phase weighted 0.5 each, the distance scaled by 300
CFD_FREQUENCIES = 4096
CFD_ALPHA, CFD_BETA = 0.5, 0.5
CFD_SCALE = 300.0


State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PoolStates:
    """What a shard draws its networks from: the states of an accuracy group (with the network
    each belongs to), and every network's first (random) and last (trained) state."""

    group: list[tuple[int, State]]
    initial: dict[int, State]
    final: dict[int, State]

    def to(self, device: torch.device) -> "PoolStates":
        def move(state: State) -> State:
            return {k: v.to(device) for k, v in state.items()}

        return PoolStates([(n, move(s)) for n, s in self.group], {n: move(s) for n, s in self.initial.items()},
                          {n: move(s) for n, s in self.final.items()})


class NetworkSource(Protocol):
    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> int | None:
        """Set ``net``'s parameters (in place: a compiled embedding stays valid) for one iteration;
        returns the pool network they come from (None for a random network)."""


class RandomNetworks:
    """DM: a fresh random initialisation every iteration, from the iteration's generator."""

    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> int | None:
        init_parameters_(net, gen)
        return None


class PoolNetworks:
    """A state of a trained network every iteration, drawn uniformly from the accuracy group on
    the host, from (seed, iteration): no device read decides it."""

    def __init__(self, pool: PoolStates) -> None:
        if not pool.group:
            raise ValueError("the pool group holds no state: choose a group that the pool's states fall in")
        self.group = pool.group

    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> int | None:
        network, state = self.group[_rng(seed, iteration).randrange(len(self.group))]
        net.load_state_dict(state)  # copies into the network's own tensors and layout
        return network


class BlendNetworks:
    """DANCE/NCFM: one pool network per iteration, its parameters a blend of its initial and
    final states, (1 - a) * initial + a * final with a ~ U(0, 1); both drawn on the host."""

    def __init__(self, pool: PoolStates) -> None:
        self.networks = sorted(set(pool.initial) & set(pool.final))
        if not self.networks:
            raise ValueError("blended networks need the pool's first and last states of at least one network")
        self.initial, self.final = pool.initial, pool.final

    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> int | None:
        rng = _rng(seed, iteration)
        network, a = self.networks[rng.randrange(len(self.networks))], rng.random()
        start, end = self.initial[network], self.final[network]
        with torch.no_grad():
            for key, value in net.state_dict().items():
                value.copy_(torch.lerp(start[key], end[key], a) if value.is_floating_point() else end[key])
        return network


def _rng(seed: int, iteration: int) -> random.Random:
    return random.Random(derive_seed(seed, "iter", iteration, "network"))


def cfd(real: torch.Tensor, weights: torch.Tensor, syn: torch.Tensor, frequencies: torch.Tensor,
        alpha: float = CFD_ALPHA, beta: float = CFD_BETA) -> torch.Tensor:
    """Sum over classes of NCFM's characteristic-function distance between the real [K, n, D]
    (rows weighted by ``weights`` [K, n]) and synthetic [K, m, D] embeddings, at ``frequencies``
    [K or 1, F, D]. Embeddings are scaled to unit length first, as NCFM's code does, so that
    t.x of a standard Gaussian t is of order one; per frequency the amplitude term
    (|phi_r| - |phi_s|)^2 weighs ``alpha`` and the phase term 2 (|phi_r||phi_s| - Re phi_r conj phi_s)
    weighs ``beta``; a class's distance is the mean over frequencies of their root, times CFD_SCALE."""
    real, syn = F.normalize(real, dim=-1), F.normalize(syn, dim=-1)
    w = (weights / weights.sum(dim=1, keepdim=True)).unsqueeze(-1)
    pr, ps = real @ frequencies.transpose(1, 2), syn @ frequencies.transpose(1, 2)  # [K, n, F], [K, m, F]
    real_cos, real_sin = (w * torch.cos(pr)).sum(dim=1), (w * torch.sin(pr)).sum(dim=1)
    syn_cos, syn_sin = torch.cos(ps).mean(dim=1), torch.sin(ps).mean(dim=1)
    real_amp, syn_amp = torch.hypot(real_cos, real_sin), torch.hypot(syn_cos, syn_sin)
    amplitude = (real_amp - syn_amp) ** 2
    phase = (2 * (real_amp * syn_amp - real_cos * syn_cos - real_sin * syn_sin)).clamp_min(1e-12)
    return CFD_SCALE * (alpha * amplitude + beta * phase).sqrt().mean(dim=1).sum()


def gaussian_frequencies(count: int, dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """[1, count, dim] standard Gaussian frequencies, shared by every class (NCFM without its sampler)."""
    return torch.randn(1, count, dim, generator=gen, device=device)


def mmd(real: torch.Tensor, weights: torch.Tensor, syn: torch.Tensor, kernel: str) -> torch.Tensor:
    """Sum over classes of the (biased) MMD² between each class's real embeddings ``real``
    [K, n, D] (rows weighted by ``weights`` [K, n]: 0 for padding) and synthetic ``syn``
    [K, m, D]. ``linear`` is the squared distance of the means, DM's loss. ``rbf`` averages over
    RBF_SCALES the MMD² of the Gaussian kernel (h / 2) exp(-|x - y|² / h), h a multiple of the
    mean squared distance of the class's real embeddings: the factor h / 2 makes a wide kernel's
    MMD² tend to DM's loss (exp(-d/h) ~ 1 - d/h), so the images move at DM's learning rate,
    where the bare kernel's gradient is 1/h of DM's."""
    w = weights / weights.sum(dim=1, keepdim=True)
    if kernel == "linear":
        real_mean = (w.unsqueeze(-1) * real).sum(dim=1)
        return ((real_mean - syn.mean(dim=1)) ** 2).sum()
    if kernel != "rbf":
        raise ValueError(f"unknown kernel {kernel!r}; choose linear or rbf")
    rr, rs, ss = (torch.cdist(a, b).square() for a, b in ((real, real), (real, syn), (syn, syn)))
    with torch.no_grad():  # the bandwidths follow the real data, a constant of the loss
        spread = (rr * (w.unsqueeze(2) * w.unsqueeze(1))).sum(dim=(1, 2)).clamp_min(1e-12)[:, None, None]
    return sum(gaussian_mmd(rr, rs, ss, w, scale * spread) for scale in RBF_SCALES) / len(RBF_SCALES)


def gaussian_mmd(rr: torch.Tensor, rs: torch.Tensor, ss: torch.Tensor, w: torch.Tensor,
                 bandwidth: torch.Tensor) -> torch.Tensor:
    """Sum over classes of the MMD² of the kernel (h / 2) exp(-d / h) from the squared distances
    real-real, real-synthetic and synthetic-synthetic, the real rows weighted by ``w``."""
    k = [torch.exp(-d / bandwidth) for d in (rr, rs, ss)]
    term_rr = (w.unsqueeze(2) * w.unsqueeze(1) * k[0]).sum(dim=(1, 2))
    term_rs = (w.unsqueeze(2) * k[1]).sum(dim=(1, 2)) / rs.shape[2]
    term_ss = k[2].mean(dim=(1, 2))
    return (bandwidth.flatten() / 2 * (term_rr - 2 * term_rs + term_ss)).sum()


# ------------------------------------------------------------------ matching losses
class MatchingLoss(Protocol):
    """How the real and synthetic embeddings of every class are compared, summed over classes."""

    means_only: ClassVar[bool]  # needs only the real class means [K, D] (streamed), else every embedding

    def __call__(self, real: torch.Tensor, weights: torch.Tensor | None, syn: torch.Tensor,
                 generator: Callable[..., torch.Generator]) -> torch.Tensor:
        """``real``: [K, D] means, or [K, n, D] embeddings with ``weights`` [K, n] (0: padding);
        ``syn``: [K, m, D]; ``generator(*ids)``: this iteration's stream (a class's own with its id),
        for losses that draw."""


@dataclass(frozen=True)
class MeanLoss:
    """DM: the squared distance of the class means (kernel MMD with the linear kernel is the same)."""

    means_only: ClassVar[bool] = True

    def __call__(self, real: torch.Tensor, weights: torch.Tensor | None, syn: torch.Tensor,
                 generator: Callable[..., torch.Generator]) -> torch.Tensor:
        return ((real - syn.mean(dim=1)) ** 2).sum()


@dataclass(frozen=True)
class KernelMMD:
    """M3D: the MMD with a Gaussian kernel of several bandwidths (``mmd``)."""

    kernel: str
    means_only: ClassVar[bool] = False

    def __call__(self, real: torch.Tensor, weights: torch.Tensor | None, syn: torch.Tensor,
                 generator: Callable[..., torch.Generator]) -> torch.Tensor:
        return mmd(real, weights, syn, self.kernel)


@dataclass(frozen=True)
class CharacteristicFunctions:
    """NCFM: the distance of the empirical characteristic functions at frequencies drawn each
    iteration: standard Gaussian ones, or those of each class's sampling network (``sampler``,
    workers.frequency_sampler), which the condenser trains to maximise this distance."""

    frequencies: int = CFD_FREQUENCIES
    sampler: nn.Module | None = None
    means_only: ClassVar[bool] = False

    def __call__(self, real: torch.Tensor, weights: torch.Tensor | None, syn: torch.Tensor,
                 generator: Callable[..., torch.Generator]) -> torch.Tensor:
        if self.sampler is not None:
            return cfd(real, weights, syn, self.sampler(generator))
        return cfd(real, weights, syn, gaussian_frequencies(self.frequencies, real.shape[-1], generator(), real.device))


def matching_loss(loss: str, kernel: str, sampler: nn.Module | None = None) -> MatchingLoss:
    """The loss named by ``condense.loss`` and ``condense.kernel`` (``sampler``: NCFM's learned frequencies)."""
    if loss == "mean" or (loss == "mmd" and kernel == "linear"):
        return MeanLoss()
    if loss == "mmd":
        return KernelMMD(kernel)
    if loss == "cfd":
        return CharacteristicFunctions(sampler=sampler)
    raise ValueError(f"unknown matching loss {loss!r}; choose mean, mmd or cfd")
