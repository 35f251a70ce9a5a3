"""Many fresh networks of one architecture trained at once: one vmapped step trains them all
(``workers.vmap_train.StackedNetworks``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from workers.training.augmentation import maybe_augment
from workers.training.distill import checked_teacher, stacked_losses
from workers.training.optimizers import optimizer_for_epoch
from workers.training.plain import epoch_batches
from workers.training.settings import ManyEpochCallback, ModelStreams, TrainSettings
from workers.vmap_train import StackedNetworks


def should_vectorize(n_models: int, device: torch.device) -> bool:
    """Whether training ``n_models`` together beats one after the other (benchmarks/bench_eval.py).

    On CUDA, one model's small batches leave the GPU waiting on kernel launches, and
    vmap launches each kernel once for all models. On the CPU the looped path is
    already bound by convolution arithmetic (66-73% of its time at about 100 GFLOP/s per
    core for ConvNet), which vmap cannot remove, while vmap adds grouped convolutions
    and a costlier batched GroupNorm: measured 0.78-0.92x the looped speed on one
    thread (as evaluation actors run), so the CPU loops.
    """
    return device.type == "cuda" and n_models > 1


def train_stacked(nets: Sequence[nn.Module], train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings,
                  seeds: Sequence[int], on_epoch: ManyEpochCallback | None = None,
                  teacher: nn.Module | None = None) -> None:
    """``plain.train_network`` for every (net, seed) at once.

    Each model keeps its own streams (batch order, augmentation draws), so model m sees exactly
    the batches and augmentations it would see alone; augmentation runs per model, and
    the teacher (soft labels) labels every model's batch in one forward.
    """
    device = train_x.device
    teacher = checked_teacher(settings, teacher, device)
    with settings.precision.numerics(device):
        _train_stacked(nets, train_x, train_y, settings, seeds, on_epoch, teacher)


def _train_stacked(nets: Sequence[nn.Module], train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings,
                   seeds: Sequence[int], on_epoch: ManyEpochCallback | None, teacher: nn.Module | None) -> None:
    device = train_x.device
    stacked = StackedNetworks(nets).train()
    named = list(stacked.params.items())
    streams = [ModelStreams.for_seed(s, device) for s in seeds]
    optimizer = None
    for epoch in range(settings.epochs):
        optimizer = optimizer_for_epoch(optimizer, named, settings, epoch, stacked=True)
        total = torch.zeros(len(nets), device=device)
        orders = [epoch_batches(len(train_x), settings.batch, s.order, device) for s in streams]
        for step in zip(*orders):
            idx = torch.stack(step)  # [M, b]
            xb = torch.stack([maybe_augment(train_x[i], settings, s) for i, s in zip(idx, streams)])
            losses = stacked_losses(stacked(xb), xb, train_y[idx], settings, teacher)  # stacked(xb): [M, b, K]
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # models are independent: each gets its own gradient
            optimizer.step()
            total += losses.detach() * idx.shape[1]
        if on_epoch is not None:
            for m, loss in enumerate((total / len(train_x)).tolist()):
                on_epoch(m, epoch, settings.lr_at(epoch), loss)
    stacked.write_back(nets)
