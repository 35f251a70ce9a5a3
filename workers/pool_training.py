"""Training one network of a pool on the real training set: its states at fixed steps, each
with its accuracy on a held-out validation split, and the forgetting events of every
training example (Toneva et al.: classified right at one presentation, wrong at a later one).

Pure PyTorch. Every random stream comes from the network's seed: the initial parameters,
the batch order, the augmentation draws.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from workers.augment import augment_batch
from workers.seeding import derive_seed, generator
from workers.train_eval import TrainSettings, epoch_batches, fresh_network, make_sgd, restarts_optimizer

StepCallback = Callable[[int, int], None]  # (steps done, total steps)


@dataclass(frozen=True)
class Schedule:
    """The steps whose states are kept: 0 (the random initialisation), every ``every`` steps,
    with ``early`` also the powers of two below ``every`` (accuracy rises fastest there), and
    the last step."""

    every: int
    early: bool = True

    def steps(self, total: int) -> list[int]:
        kept = set(range(0, total + 1, self.every)) | {total}
        if self.early:
            kept |= {2**k for k in range(max(self.every.bit_length(), 1)) if 2**k < min(self.every, total)}
        return sorted(kept)


class ForgettingCounter:
    """Forgetting events of every training example (Toneva et al.): an example presented and
    classified wrong after it was classified right at its previous presentation."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.previous = torch.zeros(n, dtype=torch.bool, device=device)
        self.events = torch.zeros(n, dtype=torch.int32, device=device)
        self.learned = torch.zeros(n, dtype=torch.bool, device=device)

    def update(self, idx: torch.Tensor, correct: torch.Tensor) -> None:
        """``correct``: whether each example of ``idx`` (distinct) was classified right as presented."""
        self.events[idx] += (self.previous[idx] & ~correct).to(torch.int32)
        self.learned[idx] |= correct
        self.previous[idx] = correct


@dataclass
class TrainedNetwork:
    steps: list[int]  # the kept steps, ascending: 0 first, the last step last
    states: list[dict[str, torch.Tensor]]  # state_dict at each kept step, on the CPU
    val_accuracy: list[float]  # in [0, 1], at each kept step
    forgetting: torch.Tensor  # int32 [n_train]: forgetting events of each training example
    learned: torch.Tensor  # bool [n_train]: classified right at least once when presented


def train_pool_network(
    model: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    settings: TrainSettings,
    schedule: Schedule,
    seed: int,
    device: torch.device,
    on_step: StepCallback | None = None,
) -> TrainedNetwork:
    """Train a fresh ``model`` from ``seed`` for ``settings.epochs`` epochs on (train_x, train_y)
    (normalised floats, on ``device``); keep the states of ``schedule`` with their accuracy on
    the validation split, and count every training example's forgetting events."""
    net = fresh_network(model, channels=channels, num_classes=num_classes, im_size=im_size, seed=seed, device=device)
    n = len(train_x)
    total = settings.epochs * -(-n // settings.batch)
    keep = set(schedule.steps(total))
    order = generator(derive_seed(seed, "batch_order"))
    dsa = generator(derive_seed(seed, "dsa"), device)
    ops = random.Random(derive_seed(seed, "dsa_op"))
    counter = ForgettingCounter(n, device)
    out = TrainedNetwork([], [], [], counter.events, counter.learned)
    step = 0
    with settings.precision.numerics(device):
        _keep(out, net, step, val_x, val_y, settings)
        for epoch in range(settings.epochs):
            if restarts_optimizer(settings, epoch):
                optimizer = make_sgd(net.parameters(), settings, settings.lr_at(epoch))
            net.train()
            for idx in epoch_batches(n, settings.batch, order, device):
                xb = train_x[idx]
                if settings.augments:
                    xb = augment_batch(xb, settings.dsa_strategy, dsa, ops)
                logits = net(xb)
                counter.update(idx, logits.argmax(1) == train_y[idx])  # as presented, before this step's update
                loss = F.cross_entropy(logits, train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step in keep:
                    _keep(out, net, step, val_x, val_y, settings)
                if on_step is not None:
                    on_step(step, total)
    out.forgetting, out.learned = counter.events.cpu(), counter.learned.cpu()
    return out


@torch.no_grad()
def _keep(out: TrainedNetwork, net: torch.nn.Module, step: int, val_x: torch.Tensor, val_y: torch.Tensor,
          settings: TrainSettings) -> None:
    net.eval()
    correct = sum(int((net(val_x[i : i + settings.test_batch]).argmax(1) == val_y[i : i + settings.test_batch]).sum())
                  for i in range(0, len(val_x), settings.test_batch))
    net.train()
    out.steps.append(step)
    out.states.append({k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
    out.val_accuracy.append(correct / max(len(val_x), 1))


def held_out(count: int, fraction: float) -> int:
    """How many of a class's ``count`` rows validation_split holds out."""
    return round(count * fraction)


def train_size(counts: Sequence[int], fraction: float) -> int:
    """Rows validation_split leaves to train on, from the per-class counts alone."""
    return sum(n - held_out(n, fraction) for n in counts)


def validation_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, validation rows) of a labelled set: per class, a seeded permutation whose
    first round(n * fraction) rows are held out; both lists ascending."""
    rng = random.Random(derive_seed(seed, "pool-validation"))
    by_class: dict[int, list[int]] = {}
    for row, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(row)
    train, val = [], []
    for c in sorted(by_class):
        rows = by_class[c][:]
        rng.shuffle(rows)
        cut = held_out(len(rows), fraction)
        val += rows[:cut]
        train += rows[cut:]
    return sorted(train), sorted(val)
