"""The dataset contract shared by every source: info, image sets, readers, normalisation.

Pixels travel as uint8 ``[N, C, H, W]``; ``mean``/``std`` are per channel in
[0, 1] pixel units, computed over every pixel of the train split (population
standard deviation), and normalisation is ``x = (u8 / 255 - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


class DatasetError(ValueError):
    """Bad dataset input: the message names the problem and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know of a dataset before reading any pixels: planning checks
    (class ids, per-class counts, image size) and normalisation. Built once per run."""

    name: str
    class_names: list[str]
    channels: int
    im_size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]  # per channel, [0, 1] units, from the train split
    std: tuple[float, ...]
    train_counts: tuple[int, ...]  # images per class, by class id
    test_counts: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if len(self.train_counts) != k or len(self.test_counts) != k:
            raise ValueError(f"{self.name}: {k} classes but {len(self.train_counts)} train and "
                             f"{len(self.test_counts)} test counts")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N], global class ids

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@runtime_checkable
class DatasetReader(Protocol):
    info: DatasetInfo

    def read_train(self, class_ids: Sequence[int]) -> ImageSet:
        """Only the given classes' train images, ordered by class id."""
        ...

    def read_test(self) -> ImageSet: ...

    def class_fingerprints(self) -> list[str]:
        """Per class id, what identifies its train images (workers.data.fingerprint)."""
        ...


@dataclass(frozen=True)
class Skipped:
    """A file left out because it could not be decoded."""

    path: str
    reason: str


def check_class_ids(class_ids: Sequence[int], num_classes: int) -> list[int]:
    """Sorted unique ids, or an error naming the ones out of range."""
    ids = sorted({int(c) for c in class_ids})
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise DatasetError(f"class ids {bad} out of range: the dataset has classes 0..{num_classes - 1}")
    return ids


class ChannelStats:
    """Exact per-channel pixel sums (uint8 units), mergeable across class ranges.

    Integer sums keep the result independent of how the split was cut into ranges.
    """

    _CHUNK = 256  # images per accumulation step: bounds the int64 temporary

    def __init__(self, channels: int) -> None:
        self.total = [0] * channels
        self.total_sq = [0] * channels
        self.count = 0  # pixels per channel

    def add(self, images_u8: np.ndarray) -> ChannelStats:
        """Accumulate uint8 images [N, C, H, W]."""
        for start in range(0, len(images_u8), self._CHUNK):
            chunk = images_u8[start : start + self._CHUNK].astype(np.int64)
            per_channel = chunk.transpose(1, 0, 2, 3).reshape(chunk.shape[1], -1)
            self.total = [t + int(v) for t, v in zip(self.total, per_channel.sum(axis=1))]
            sq = np.square(per_channel).sum(axis=1)
            self.total_sq = [t + int(v) for t, v in zip(self.total_sq, sq)]
            self.count += per_channel.shape[1]
        return self

    def merge(self, other: ChannelStats) -> ChannelStats:
        self.total = [a + b for a, b in zip(self.total, other.total)]
        self.total_sq = [a + b for a, b in zip(self.total_sq, other.total_sq)]
        self.count += other.count
        return self

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and population std per channel, in [0, 1] units."""
        if self.count == 0:
            raise DatasetError("no train pixels to compute mean/std from: the train split is empty")
        n = self.count
        mean = tuple(t / n / 255.0 for t in self.total)
        var = (max(sq * n - t * t, 0) / (n * n) for t, sq in zip(self.total, self.total_sq))
        return mean, tuple(math.sqrt(v) / 255.0 for v in var)

    def to_dict(self) -> dict:
        return {"sum": self.total, "sum_sq": self.total_sq, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> ChannelStats:
        stats = cls(len(data["sum"]))
        stats.total = [int(v) for v in data["sum"]]
        stats.total_sq = [int(v) for v in data["sum_sq"]]
        stats.count = int(data["count"])
        return stats


def _channel_view(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalize(
    images_u8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 [N, C, H, W] -> ``(u8 / 255 - mean) / std`` on ``device``.

    The uint8 tensor moves first (4x fewer bytes than floats), then converts.
    """
    x = images_u8.to(device) if device is not None else images_u8
    x = x.to(dtype) / 255.0
    return (x - _channel_view(mean, x)) / _channel_view(std, x)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised images back to [0, 1] floats (clamped), for pictures."""
    return (x * _channel_view(std, x) + _channel_view(mean, x)).clamp(0.0, 1.0)
