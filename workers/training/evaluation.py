"""The evaluation worker's entries: fresh networks trained on a set (``train_networks``) and
scored on a test split (``train_and_score``), under one ``TrainSettings`` and the dataset's facts
(``DatasetInfo``: channels, classes, image size, normalisation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from workers.data.types import DatasetInfo
from workers.teachers import inference_memory
from workers.training.distill import checked_teacher
from workers.training.memory import default_memory_budget, models_per_step
from workers.training.plain import fresh_network, train_network
from workers.training.scoring import check_split, score_networks
from workers.training.settings import ManyEpochCallback, TrainSettings
from workers.training import vectorized as vectorised_path


@dataclass(frozen=True)
class Placement:
    """Where and how the networks train; shapes no score beyond float rounding."""

    device: torch.device | str = "cpu"
    vectorized: bool | None = None  # True: vmap over stacked models; False: one after the other; None: the faster
    memory_budget: int | None = None  # bytes of one vectorised step (None: default_memory_budget)


def train_networks(model: str, train_x: torch.Tensor, train_y: torch.Tensor, data: DatasetInfo,
                   settings: TrainSettings, seeds: Sequence[int], placement: Placement = Placement(), *,
                   on_epoch: ManyEpochCallback | None = None, teacher: nn.Module | None = None) -> list[nn.Module]:
    """One fresh ``model`` per seed trained on (train_x, train_y), on the vectorised path or one
    after the other; both give each model the draws of its seed alone. Vectorised, as many models
    train together as one step of theirs fits in the memory budget (``models_per_step``); every
    network of the zoo vmaps, BatchNorm included. ``teacher``: required with soft labels
    (``settings.labels``), refused with hard ones."""
    if len(seeds) == 0:
        raise ValueError("seeds is empty: pass at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (repeated seeds train identical models), got {list(seeds)}")
    check_split("train", train_x, train_y, data)
    device = torch.device(placement.device)
    teacher = checked_teacher(settings, teacher, device)
    nets = [fresh_network(model, channels=data.channels, num_classes=data.num_classes, im_size=tuple(data.im_size),
                          seed=s, device=device) for s in seeds]
    train_x, train_y = train_x.to(device), train_y.to(device)
    vectorized = placement.vectorized
    if vectorized is None:
        vectorized = vectorised_path.should_vectorize(len(seeds), device)
    if not vectorized:
        for i, (net, seed) in enumerate(zip(nets, seeds)):
            callback = None if on_epoch is None else (lambda e, lr, loss, i=i: on_epoch(i, e, lr, loss))
            train_network(net, train_x, train_y, settings, seed, callback, teacher)
        return nets
    budget = placement.memory_budget if placement.memory_budget is not None else default_memory_budget(device)
    shape = (data.channels, *data.im_size)
    chunk = models_per_step(model, shape, data.num_classes, min(settings.batch, len(train_x)), budget,
                            None if teacher is None else inference_memory(teacher, shape))
    for start in range(0, len(nets), chunk):
        part = slice(start, start + chunk)
        callback = None if on_epoch is None else (lambda m, e, lr, loss, s=start: on_epoch(s + m, e, lr, loss))
        vectorised_path.train_stacked(nets[part], train_x, train_y, settings, seeds[part], callback, teacher)
    return nets


def train_and_score(model: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                    test_y: torch.Tensor, data: DatasetInfo, settings: TrainSettings, seeds: Sequence[int],
                    placement: Placement = Placement(), *, on_epoch: ManyEpochCallback | None = None,
                    teacher: nn.Module | None = None) -> list[float]:
    """The test accuracy in [0, 1] of one fresh ``model`` per seed (``train_networks``); a uint8
    test split is normalised with the dataset's mean and std."""
    check_split("test", test_x, test_y, data)
    nets = train_networks(model, train_x, train_y, data, settings, seeds, placement, on_epoch=on_epoch,
                          teacher=teacher)
    return score_networks(nets, test_x, test_y, data, settings, torch.device(placement.device))
