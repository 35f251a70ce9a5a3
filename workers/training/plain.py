"""One fresh network trained on a labelled set, under the settings' protocol."""

from __future__ import annotations

import torch
from torch import nn

from workers.networks import build_network, init_parameters_
from workers.seeding import generator
from workers.training.augmentation import maybe_augment
from workers.training.distill import batch_loss, checked_teacher
from workers.training.optimizers import make_sgd, optimizer_for_epoch
from workers.training.settings import EpochCallback, ModelStreams, TrainSettings


def fresh_network(
    model_name: str,
    *,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    seed: int,
    device: torch.device | str,
) -> nn.Module:
    """A network initialised on the CPU from ``generator(seed)`` (same bytes on any device)."""
    net = build_network(model_name, channels, num_classes, tuple(im_size))
    init_parameters_(net, generator(seed))
    return net.to(device)


def epoch_batches(n: int, batch: int, order: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """One epoch's shuffled mini-batches of indices into a set of ``n`` samples, on ``device``.

    The order is drawn on the CPU (the same batches on any device) and copied once per
    epoch; on CUDA from pinned memory without waiting, so no training step waits for it."""
    perm = torch.randperm(n, generator=order)
    if device.type == "cuda":
        perm = perm.pin_memory().to(device, non_blocking=True)
    return list(perm.split(batch))


def train_network(net: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings, seed: int,
                  on_epoch: EpochCallback | None = None, teacher: nn.Module | None = None) -> nn.Module:
    """Train ``net`` in place on (train_x, train_y), already on the network's device; with soft
    labels, on ``teacher``'s labels of each augmented batch."""
    device = train_x.device
    teacher = checked_teacher(settings, teacher, device)
    streams = ModelStreams.for_seed(seed, device)
    named = list(net.named_parameters())
    net.train()
    optimizer = None
    with settings.precision.numerics(device):
        for epoch in range(settings.epochs):
            optimizer = optimizer_for_epoch(optimizer, named, settings, epoch)
            total = torch.zeros((), device=device)
            for idx in epoch_batches(len(train_x), settings.batch, streams.order, device):
                total += train_step(net, optimizer, train_x, train_y, idx, settings, streams, teacher) * len(idx)
            if on_epoch is not None:
                on_epoch(epoch, settings.lr_at(epoch), (total / len(train_x)).item())
    return net


def train_for_steps(net: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings,
                    seed: int, steps: int) -> nn.Module:
    """``train_network`` under the paper protocol for a number of steps rather than epochs (the
    learning rate x0.1 at half of them, with a new optimizer, as at half of the epochs): "early
    stopping" in NAS, a network trained on the whole set for as many steps as one trained on a
    small proxy set takes. Hard labels."""
    if settings.protocol != "paper" or settings.labels != "hard":
        raise ValueError("train_for_steps follows the paper protocol with hard labels: pass such TrainSettings")
    device = train_x.device
    streams = ModelStreams.for_seed(seed, device)
    net.train()
    done = 0
    with settings.precision.numerics(device):
        while done < steps:
            for idx in epoch_batches(len(train_x), settings.batch, streams.order, device):
                if done in (0, steps // 2):
                    optimizer = make_sgd(net.parameters(), settings, settings.lr * (0.1 if done else 1.0))
                train_step(net, optimizer, train_x, train_y, idx, settings, streams)
                done += 1
                if done == steps:
                    break
    return net


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, train_x: torch.Tensor, train_y: torch.Tensor,
               idx: torch.Tensor, settings: TrainSettings, streams: ModelStreams,
               teacher: nn.Module | None = None) -> torch.Tensor:
    """One mini-batch of ``idx`` (on the device); returns its loss as a device tensor, so that
    no step waits for the device. ``teacher``: soft labels, already checked (``checked_teacher``)."""
    xb = maybe_augment(train_x[idx], settings, streams)
    loss = batch_loss(net(xb), xb, train_y[idx], settings, teacher)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
