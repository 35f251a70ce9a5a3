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
from workers.training.optimizers import make_sgd, restarts_optimizer
from workers.training.plain import epoch_batches, fresh_network
from workers.training.settings import TrainSettings

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


@dataclass(frozen=True)
class EpochCheckpoint:
    """Everything a network's training holds at the end of an epoch, so that training resumed
    from it gives the bytes of an uninterrupted one: the weights, the optimizer (its momentum),
    the three random streams, the forgetting counts and the states kept so far."""

    epochs_done: int
    step: int
    network: dict[str, torch.Tensor]
    optimizer: dict
    order_state: torch.Tensor
    dsa_state: torch.Tensor
    ops_state: tuple
    previous: torch.Tensor
    events: torch.Tensor
    learned: torch.Tensor
    kept_steps: list[int]
    kept_states: list[dict[str, torch.Tensor]]
    kept_accuracy: list[float]


EpochSink = Callable[[EpochCheckpoint], None]


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
    resume: EpochCheckpoint | None = None,
    on_epoch: EpochSink | None = None,
) -> TrainedNetwork:
    """Train a fresh ``model`` from ``seed`` for ``settings.epochs`` epochs on (train_x, train_y)
    (normalised floats, on ``device``); keep the states of ``schedule`` with their accuracy on
    the validation split, and count every training example's forgetting events. ``on_epoch``
    receives the training's state after every epoch but the last; ``resume`` continues from one."""
    net = fresh_network(model, channels=channels, num_classes=num_classes, im_size=im_size, seed=seed, device=device)
    n = len(train_x)
    total = settings.epochs * -(-n // settings.batch)
    keep = set(schedule.steps(total))
    order = generator(derive_seed(seed, "batch_order"))
    dsa = generator(derive_seed(seed, "dsa"), device)
    ops = random.Random(derive_seed(seed, "dsa_op"))
    counter = ForgettingCounter(n, device)
    out = TrainedNetwork([], [], [], counter.events, counter.learned)
    step, first_epoch, optimizer = 0, 0, None
    with settings.precision.numerics(device):
        if resume is None:
            _keep(out, net, step, val_x, val_y, settings)
        else:
            step, first_epoch = resume.step, resume.epochs_done
            optimizer = _restore(resume, net, order, dsa, ops, counter, out, settings, device)
        for epoch in range(first_epoch, settings.epochs):
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
            if on_epoch is not None and epoch + 1 < settings.epochs:
                on_epoch(_checkpoint(epoch + 1, step, net, optimizer, order, dsa, ops, counter, out))
    out.forgetting, out.learned = counter.events.cpu(), counter.learned.cpu()
    return out


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _checkpoint(epochs_done: int, step: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                order: torch.Generator, dsa: torch.Generator, ops: random.Random, counter: ForgettingCounter,
                out: TrainedNetwork) -> EpochCheckpoint:
    opt = optimizer.state_dict()
    opt = {"param_groups": opt["param_groups"],
           "state": {k: {n: t.detach().cpu().clone() if torch.is_tensor(t) else t for n, t in v.items()}
                     for k, v in opt["state"].items()}}
    return EpochCheckpoint(
        epochs_done=epochs_done, step=step, network=_cpu(net.state_dict()), optimizer=opt,
        order_state=order.get_state(), dsa_state=dsa.get_state(), ops_state=ops.getstate(),
        previous=counter.previous.cpu().clone(), events=counter.events.cpu().clone(),
        learned=counter.learned.cpu().clone(), kept_steps=list(out.steps), kept_states=list(out.states),
        kept_accuracy=list(out.val_accuracy),
    )


def _restore(ck: EpochCheckpoint, net: torch.nn.Module, order: torch.Generator, dsa: torch.Generator,
             ops: random.Random, counter: ForgettingCounter, out: TrainedNetwork, settings: TrainSettings,
             device: torch.device) -> torch.optim.Optimizer | None:
    """Put ``ck`` back into the training's objects; the optimizer unless the next epoch makes a new one."""
    net.load_state_dict(ck.network)
    order.set_state(ck.order_state)
    dsa.set_state(ck.dsa_state)
    ops.setstate(ck.ops_state)
    counter.previous.copy_(ck.previous.to(device))
    counter.events.copy_(ck.events.to(device))
    counter.learned.copy_(ck.learned.to(device))
    out.steps[:], out.states[:], out.val_accuracy[:] = ck.kept_steps, ck.kept_states, ck.kept_accuracy
    if restarts_optimizer(settings, ck.epochs_done):
        return None
    optimizer = make_sgd(net.parameters(), settings, settings.lr_at(ck.epochs_done))
    optimizer.load_state_dict(ck.optimizer)
    return optimizer


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Top-1 accuracy in [0, 1] of ``net`` (in eval mode) on normalised ``x``."""
    was_training = net.training
    net.eval()
    correct = sum(int((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    net.train(was_training)
    return correct / max(len(x), 1)


def final_state_accuracy(model: str, trained: TrainedNetwork, x: torch.Tensor, y: torch.Tensor, *, channels: int,
                         num_classes: int, im_size: tuple[int, int], settings: TrainSettings,
                         device: torch.device) -> float:
    """The accuracy of the last kept state (the trained network) on held-out images."""
    net = fresh_network(model, channels=channels, num_classes=num_classes, im_size=im_size, seed=0, device=device)
    net.load_state_dict(trained.states[-1])
    with settings.precision.numerics(device):
        return accuracy(net, x, y, settings.test_batch)


def _keep(out: TrainedNetwork, net: torch.nn.Module, step: int, val_x: torch.Tensor, val_y: torch.Tensor,
          settings: TrainSettings) -> None:
    out.steps.append(step)
    out.val_accuracy.append(accuracy(net, val_x, val_y, settings.test_batch))
    out.states.append(_cpu(net.state_dict()))


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
