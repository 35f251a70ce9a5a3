"""How fresh networks train: one frozen record, built from the config by
``orchestrator.components.settings`` (which validates every value once), and each model's
random streams.

Every model draws from three streams derived from its seed only: the initial parameters
(``generator(seed)``), the batch order and the augmentation draws. Training several models
together (vectorised) or one after the other gives each model the same draws, so the two paths
differ only by float rounding.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from workers.augment import DEFAULT_STRATEGY
from workers.devices import Precision
from workers.seeding import derive_seed, generator
from workers.training.protocols import PROTOCOLS, Protocol, ProtocolRule

EpochCallback = Callable[[int, float, float], None]  # (epoch, lr, mean train loss)
ManyEpochCallback = Callable[[int, int, float, float], None]  # (model index, epoch, lr, loss)

_NO_AUGMENTATION = ("", "none")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9  # SGD's (the paper protocol)
    weight_decay: float = 5e-4
    batch: int = 256
    dsa_strategy: str | None = DEFAULT_STRATEGY  # None, "" or "none": no augmentation (under every protocol)
    test_batch: int = 512
    precision: Precision = field(default_factory=Precision)  # TF32 on CUDA, deterministic mode
    labels: Literal["hard", "soft"] = "hard"  # soft: a teacher relabels every augmented batch
    temperature: float = 1.2  # of the soft labels (workers.training.distill)
    protocol: Protocol = "paper"  # optimizer, schedule, loss and augmentation (workers.training.protocols)
    patch_factor: int = 1  # rded: each training image holds patch_factor^2 patches (ShufflePatches)

    @property
    def rule(self) -> ProtocolRule:
        return PROTOCOLS[self.protocol]

    @property
    def augments(self) -> bool:
        return self.dsa_strategy is not None and self.dsa_strategy.lower() not in _NO_AUGMENTATION

    @property
    def decay_epoch(self) -> int:
        return self.epochs // 2

    def lr_at(self, epoch: int) -> float:
        """The paper's step at half of the epochs, or RDED's and DD-Ranking's quarter cosine."""
        if self.rule.schedule == "quarter_cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs / 2))
        return self.lr * 0.1 if epoch >= self.decay_epoch else self.lr


@dataclass(frozen=True)
class ModelStreams:
    """The random streams of one model, all derived from its seed."""

    order: torch.Generator  # CPU: batch order
    augment: torch.Generator  # on the training device: DSA parameters
    ops: random.Random  # host: which DSA op each batch applies; RDED's and CutMix's draws (no wait for the device)

    @classmethod
    def for_seed(cls, seed: int, device: torch.device) -> "ModelStreams":
        return cls(
            order=generator(derive_seed(seed, "batch_order")),
            augment=generator(derive_seed(seed, "dsa"), device),
            ops=random.Random(derive_seed(seed, "dsa_op")),
        )
