"""Top-1 accuracy of trained networks on a test split, and the checks of what they train on."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from workers.data import normalize
from workers.data.types import DatasetInfo
from workers.training.settings import TrainSettings


def scored_batches(test_x: torch.Tensor, test_y: torch.Tensor, batch: int, device: torch.device,
                   data: DatasetInfo) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test split batch by batch on ``device``; uint8 batches are normalised one at a time."""
    for start in range(0, len(test_x), batch):
        xb = test_x[start : start + batch]
        if xb.dtype == torch.uint8:
            xb = normalize(xb, data.mean, data.std, device=device)
        else:
            xb = xb.to(device=device, dtype=torch.float32)
        yield xb, test_y[start : start + batch].to(device)


@torch.no_grad()
def score_networks(nets: Sequence[nn.Module], test_x: torch.Tensor, test_y: torch.Tensor, data: DatasetInfo,
                   settings: TrainSettings, device: torch.device) -> list[float]:
    """Top-1 accuracy of each network; every test batch is normalised once for all of them."""
    for net in nets:
        net.eval()
    correct = torch.zeros(len(nets), dtype=torch.int64, device=device)
    with settings.precision.numerics(device):
        for xb, yb in scored_batches(test_x, test_y, settings.test_batch, device, data):
            for i, net in enumerate(nets):
                correct[i] += (net(xb).argmax(dim=1) == yb).sum()
    return (correct.double() / len(test_x)).tolist()


def check_split(name: str, x: torch.Tensor, y: torch.Tensor, data: DatasetInfo) -> None:
    """``x`` images of the dataset's shape, ``y`` their class ids."""
    shape = (data.channels, *tuple(data.im_size))
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"{name}_x must be [N, {', '.join(map(str, shape))}], got {list(x.shape)}")
    if y.dim() != 1 or len(y) != len(x) or len(x) == 0:
        raise ValueError(f"{name}_y must be a non-empty [N] label tensor matching {name}_x, got {list(y.shape)}")
    if y.is_floating_point() or y.min() < 0 or y.max() >= data.num_classes:
        raise ValueError(f"{name}_y must hold integer class ids in [0, {data.num_classes}), got {y.dtype} "
                         f"in [{y.min()}, {y.max()}]")
    if name == "train" and not x.is_floating_point():
        raise ValueError(f"train_x must be float images in the normalised space, got {x.dtype}; normalise it first")
