"""Each protocol's optimizer and when it is built (workers.training.protocols)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from workers.training.settings import TrainSettings

NamedParameters = Sequence[tuple[str, torch.Tensor]]


def make_sgd(params: Iterable[torch.Tensor], settings: TrainSettings, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def make_optimizer(named: NamedParameters, settings: TrainSettings, lr: float,
                   stacked: bool = False) -> torch.optim.Optimizer:
    """The protocol's optimizer over ``named`` parameters; ``stacked``: each tensor holds many
    models' along a leading dimension (both optimizers are elementwise, so stepping the stack
    steps every model as alone)."""
    if settings.rule.optimizer == "sgd":
        return make_sgd([p for _, p in named], settings, lr)
    if not settings.rule.decay_matrices_only:
        return torch.optim.AdamW([p for _, p in named], lr=lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay)
    # RDED's get_parameters: decay on the weights of 2 dimensions or more, none on biases and norms
    own = 1 if stacked else 0
    decayed = [p for name, p in named if "weight" in name and p.dim() - own > 1]
    kept = [p for name, p in named if not ("weight" in name and p.dim() - own > 1)]
    return torch.optim.AdamW([{"params": decayed}, {"params": kept, "weight_decay": 0.0}], lr=lr,
                             betas=(0.9, 0.999), weight_decay=settings.weight_decay)


def restarts_optimizer(settings: TrainSettings, epoch: int) -> bool:
    """A new optimizer at the start, and under the paper protocol at the decay too (its
    momentum restarts, as in the paper's code)."""
    return epoch == 0 or (settings.rule.schedule == "half_step" and epoch == settings.decay_epoch)


def optimizer_for_epoch(optimizer: torch.optim.Optimizer | None, named: NamedParameters, settings: TrainSettings,
                        epoch: int, stacked: bool = False) -> torch.optim.Optimizer:
    """The optimizer of ``epoch`` at its learning rate: a new one where the protocol restarts it,
    else the running one with the schedule's rate (a scheduler stepped once per epoch)."""
    lr = settings.lr_at(epoch)
    if optimizer is None or restarts_optimizer(settings, epoch):
        return make_optimizer(named, settings, lr, stacked)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer
