"""Train fresh networks on a labelled set and score them on a test split.

The paper's evaluation protocol (``evaluate_synset`` of the DC/DSA/DM code):
a freshly initialised network, SGD (lr 0.01, momentum 0.9, weight decay 5e-4),
cross-entropy, shuffled mini-batches of 256, DSA on every training batch, the
learning rate divided by 10 at half of the epochs, then top-1 accuracy on the
real test split. As in that code, the decay builds a new optimizer, so the
momentum buffer restarts at the decay.

Every model draws from three streams derived from its seed only: the initial
parameters (``generator(seed)``), the batch order and the augmentation draws.
Training several models together (vectorised) or one after the other gives
each model the same draws, so the two paths differ only by float rounding.

Soft labels (``TrainSettings.labels == "soft"``) follow the teacher-relabelling protocol
of SRe2L, RDED and DD-Ranking (its ``soft_label_mode="M"`` with the ``kl`` criterion,
DD-Ranking v0.2.0, commit b8b09664): a frozen teacher in eval mode gives logits ``t`` on
exactly the augmented batch the student sees, and the student's logits ``z`` minimise
``KL(softmax(t/T) || softmax(z/T))``, averaged over the batch. What we take from there and
what we keep from the protocol above:

- the loss and its reduction are DD-Ranking's ``KLDivergenceLoss`` (batch mean of the
  per-image KL), and the default temperature is its default, ``T = 1.2``;
- the loss is scaled by ``T^2`` (Hinton et al.'s distillation), which DD-Ranking leaves off
  (``scale_loss=False``). Its evaluation configurations pair the loss with AdamW, whose steps
  do not depend on the loss scale; SGD's do, and with ``T^2`` the gradient's size hardly
  depends on ``T`` (that of cross-entropy near ``T = 1``), so the learning rate above fits;
- the optimizer and schedule stay the ones above, for hard and soft labels alike, so that
  the two scores differ by the labels only. DD-Ranking's configurations for teacher-labelled
  methods use AdamW (weight decay 0.01) with a cosine schedule, a learning rate picked per
  set from {0.001, 0.005, 0.01, 0.05, 0.1}, and temperatures of 20 to 30.

The teacher draws nothing at random, so soft-label training keeps the draws above.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.augment import DEFAULT_STRATEGY, augment_batch
from workers.data import normalize
from workers.devices import Precision
from workers.network_costs import training_bytes_per_image
from workers.networks import build_network, init_parameters_
from workers.seeding import derive_seed, generator
from workers.teachers import TeacherMemory, inference_memory
from workers.vmap_train import StackedNetworks

EpochCallback = Callable[[int, float, float], None]  # (epoch, lr, mean train loss)
ManyEpochCallback = Callable[[int, int, float, float], None]  # (model index, epoch, lr, loss)

_NO_AUGMENTATION = ("", "none")
LABELS = ("hard", "soft")
# Memory for one vectorised training step when the caller gives no budget: on CUDA a
# share of the device (an evaluation actor passes its own share), on the CPU a fixed cap.
CUDA_BUDGET_FRACTION = 0.5
CPU_BUDGET_BYTES = 8 << 30


@dataclass
class TrainSettings:
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256
    dsa_strategy: str | None = DEFAULT_STRATEGY  # None, "" or "none": no augmentation
    test_batch: int = 512
    precision: Precision = field(default_factory=Precision)  # TF32 on CUDA, deterministic mode
    labels: Literal["hard", "soft"] = "hard"  # soft: a teacher relabels every augmented batch
    temperature: float = 1.2  # of the soft labels (see the module docstring)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch", "test_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainSettings.lr must be > 0, got {self.lr}")
        if self.labels not in LABELS:
            raise ValueError(f"TrainSettings.labels must be one of {LABELS}, got {self.labels!r}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"TrainSettings.temperature must be a finite number > 0, got {self.temperature}")

    @property
    def augments(self) -> bool:
        return self.dsa_strategy is not None and self.dsa_strategy.lower() not in _NO_AUGMENTATION

    @property
    def decay_epoch(self) -> int:
        return self.epochs // 2

    def lr_at(self, epoch: int) -> float:
        return self.lr * 0.1 if epoch >= self.decay_epoch else self.lr


@dataclass(frozen=True)
class ModelStreams:
    """The random streams of one model, all derived from its seed."""

    order: torch.Generator  # CPU: batch order
    augment: torch.Generator  # on the training device: DSA parameters
    ops: random.Random  # host: which DSA op each batch applies (no wait for the device)

    @classmethod
    def for_seed(cls, seed: int, device: torch.device) -> "ModelStreams":
        return cls(
            order=generator(derive_seed(seed, "batch_order")),
            augment=generator(derive_seed(seed, "dsa"), device),
            ops=random.Random(derive_seed(seed, "dsa_op")),
        )


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


def make_sgd(params, settings: TrainSettings, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(
        params, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def restarts_optimizer(settings: TrainSettings, epoch: int) -> bool:
    """A new optimizer at the start and at the decay (momentum restarts, as in the paper's code)."""
    return epoch == 0 or epoch == settings.decay_epoch


def epoch_batches(n: int, batch: int, order: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """One epoch's shuffled mini-batches of indices into a set of ``n`` samples, on ``device``.

    The order is drawn on the CPU (the same batches on any device) and copied once per
    epoch; on CUDA from pinned memory without waiting, so no training step waits for it."""
    perm = torch.randperm(n, generator=order)
    if device.type == "cuda":
        perm = perm.pin_memory().to(device, non_blocking=True)
    return list(perm.split(batch))


def maybe_augment(
    x: torch.Tensor, settings: TrainSettings, streams: ModelStreams
) -> torch.Tensor:
    if not settings.augments:
        return x
    return augment_batch(x, settings.dsa_strategy, streams.augment, streams.ops)


def checked_teacher(settings: TrainSettings, teacher: nn.Module | None, device: torch.device) -> nn.Module | None:
    """The teacher that soft labels need, on ``device`` and in eval mode; None for hard labels.

    A teacher given with hard labels is refused rather than ignored: it would mean the caller
    meant soft labels."""
    if settings.labels == "hard":
        if teacher is not None:
            raise ValueError("a teacher was given for hard-label training: set TrainSettings.labels='soft' "
                             "to train on its labels, or pass no teacher")
        return None
    if teacher is None:
        raise ValueError("TrainSettings.labels is 'soft' but no teacher was given: pass the network that "
                         "relabels each batch (workers.teachers.load_teacher)")
    return teacher.to(device).eval()


@torch.no_grad()
def teacher_logits(teacher: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    return teacher(xb)


def soft_label_losses(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-image ``T^2 * KL(softmax(targets/T) || softmax(logits/T))``, ``[N]`` for ``[N, K]`` logits."""
    if targets.shape != logits.shape:
        raise ValueError(f"the teacher's logits {list(targets.shape)} do not match the student's "
                         f"{list(logits.shape)}: the teacher must classify the same {logits.shape[-1]} classes")
    log_p = F.log_softmax(logits / temperature, dim=-1)
    log_q = F.log_softmax(targets / temperature, dim=-1)  # log-space: no 0 * log 0
    return temperature**2 * (log_q.exp() * (log_q - log_p)).sum(dim=-1)


def batch_loss(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, settings: TrainSettings,
               teacher: nn.Module | None) -> torch.Tensor:
    """The mean loss of one batch: cross-entropy on the labels, or the teacher's soft labels."""
    if teacher is None:
        return F.cross_entropy(logits, yb)
    return soft_label_losses(logits, teacher_logits(teacher, xb), settings.temperature).mean()


def train_network(
    net: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: TrainSettings,
    seed: int,
    on_epoch: EpochCallback | None = None,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Train ``net`` in place on (train_x, train_y), already on the network's device; with soft
    labels, on ``teacher``'s labels of each augmented batch."""
    device = train_x.device
    teacher = checked_teacher(settings, teacher, device)
    with settings.precision.numerics(device):
        _train(net, train_x, train_y, settings, ModelStreams.for_seed(seed, device), on_epoch, teacher)
    return net


def _train(net: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings,
           streams: ModelStreams, on_epoch: EpochCallback | None, teacher: nn.Module | None) -> None:
    device = train_x.device
    net.train()
    for epoch in range(settings.epochs):
        lr = settings.lr_at(epoch)
        if restarts_optimizer(settings, epoch):
            optimizer = make_sgd(net.parameters(), settings, lr)
        total = torch.zeros((), device=device)
        for idx in epoch_batches(len(train_x), settings.batch, streams.order, device):
            total += train_step(net, optimizer, train_x, train_y, idx, settings, streams, teacher) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, lr, (total / len(train_x)).item())


def train_for_steps(net: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings,
                    seed: int, steps: int, teacher: nn.Module | None = None) -> nn.Module:
    """``train_network`` for a number of steps rather than epochs (the learning rate x0.1 at half
    of them, with a new optimizer, as at half of the epochs): "early stopping" in NAS, a network
    trained on the whole set for as many steps as one trained on a small proxy set takes."""
    device = train_x.device
    teacher = checked_teacher(settings, teacher, device)
    streams = ModelStreams.for_seed(seed, device)
    net.train()
    done = 0
    with settings.precision.numerics(device):
        while done < steps:
            for idx in epoch_batches(len(train_x), settings.batch, streams.order, device):
                if done in (0, steps // 2):
                    optimizer = make_sgd(net.parameters(), settings, settings.lr * (0.1 if done else 1.0))
                train_step(net, optimizer, train_x, train_y, idx, settings, streams, teacher)
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


def train_stacked(
    nets: Sequence[nn.Module],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: TrainSettings,
    seeds: Sequence[int],
    on_epoch: ManyEpochCallback | None = None,
    teacher: nn.Module | None = None,
) -> None:
    """``train_network`` for every (net, seed) at once: one vmapped step trains them all.

    Each model keeps its own streams (batch order, DSA draws), so model m sees exactly
    the batches and augmentations it would see alone; augmentation runs per model, and
    the teacher (soft labels) labels every model's batch in one forward.
    """
    device = train_x.device
    teacher = checked_teacher(settings, teacher, device)
    with settings.precision.numerics(device):
        _train_stacked(nets, train_x, train_y, settings, seeds, on_epoch, teacher)


def stacked_losses(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, settings: TrainSettings,
                   teacher: nn.Module | None) -> torch.Tensor:
    """Each model's mean loss ``[M]`` from its logits ``[M, b, K]`` on its batch ``xb[m]``."""
    if teacher is None:
        per_image = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
    else:
        targets = teacher_logits(teacher, xb.flatten(0, 1))
        per_image = soft_label_losses(logits.flatten(0, 1), targets, settings.temperature)
    return per_image.view(yb.shape).mean(dim=1)


def _train_stacked(nets: Sequence[nn.Module], train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings,
                   seeds: Sequence[int], on_epoch: ManyEpochCallback | None, teacher: nn.Module | None) -> None:
    device = train_x.device
    stacked = StackedNetworks(nets).train()
    streams = [ModelStreams.for_seed(s, device) for s in seeds]
    for epoch in range(settings.epochs):
        lr = settings.lr_at(epoch)
        if restarts_optimizer(settings, epoch):
            optimizer = make_sgd(stacked.parameters(), settings, lr)
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
                on_epoch(m, epoch, lr, loss)
    stacked.write_back(nets)


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


def scored_batches(
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    batch: int,
    device: torch.device,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test split batch by batch on ``device``; uint8 batches are normalised one at a time."""
    for start in range(0, len(test_x), batch):
        xb = test_x[start : start + batch]
        if xb.dtype == torch.uint8:
            xb = normalize(xb, mean, std, device=device)
        else:
            xb = xb.to(device=device, dtype=torch.float32)
        yield xb, test_y[start : start + batch].to(device)


@torch.no_grad()
def score_networks(
    nets: Sequence[nn.Module],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    settings: TrainSettings,
    device: torch.device,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> list[float]:
    """Top-1 accuracy of each network; every test batch is normalised once for all of them."""
    for net in nets:
        net.eval()
    correct = torch.zeros(len(nets), dtype=torch.int64, device=device)
    with settings.precision.numerics(device):
        for xb, yb in scored_batches(test_x, test_y, settings.test_batch, device, mean, std):
            for i, net in enumerate(nets):
                correct[i] += (net(xb).argmax(dim=1) == yb).sum()
    return (correct.double() / len(test_x)).tolist()


def check_inputs(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> None:
    shape = (channels, *tuple(im_size))
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{name}_x must be [N, {channels}, {im_size[0]}, {im_size[1]}], got {list(x.shape)}")
        if y.dim() != 1 or len(y) != len(x) or len(x) == 0:
            raise ValueError(f"{name}_y must be a non-empty [N] label tensor matching {name}_x, got {list(y.shape)}")
        if y.is_floating_point() or y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name}_y must hold integer class ids in [0, {num_classes}), got {y.dtype} in [{y.min()}, {y.max()}]")
    if not train_x.is_floating_point():
        raise ValueError(f"train_x must be float images in the normalised space, got {train_x.dtype}; normalise it first")
    if test_x.dtype == torch.uint8 and (mean is None or std is None):
        raise ValueError("test_x is uint8: pass mean and std (DatasetInfo.mean / .std) to normalise it")


def train_and_score(
    model_name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    settings: TrainSettings,
    seed: int,
    device: torch.device | str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    on_epoch: EpochCallback | None = None,
    teacher: nn.Module | None = None,
) -> float:
    """Train one fresh ``model_name`` on the training set and return its test accuracy in [0, 1].

    ``teacher``: required with soft labels (``settings.labels``), refused with hard ones."""
    device = torch.device(device)
    check_inputs(train_x, train_y, test_x, test_y, channels, num_classes, im_size, mean, std)
    teacher = checked_teacher(settings, teacher, device)
    net = fresh_network(model_name, channels=channels, num_classes=num_classes, im_size=im_size, seed=seed, device=device)
    train_network(net, train_x.to(device), train_y.to(device), settings, seed, on_epoch, teacher)
    return score_networks([net], test_x, test_y, settings, device, mean, std)[0]


def train_many(
    model_name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    settings: TrainSettings,
    seeds: Sequence[int],
    device: torch.device | str,
    vectorized: bool | None = None,
    on_epoch: ManyEpochCallback | None = None,
    memory_budget: int | None = None,
    teacher: nn.Module | None = None,
) -> list[nn.Module]:
    """Trained networks, one per seed, on the vectorised path or one after the other.

    Vectorised, as many models train together as one step of theirs fits in
    ``memory_budget`` bytes (``models_per_step``). ``teacher``: as in ``train_and_score``."""
    device = torch.device(device)
    teacher = checked_teacher(settings, teacher, device)
    nets = [
        fresh_network(model_name, channels=channels, num_classes=num_classes, im_size=im_size, seed=s, device=device)
        for s in seeds
    ]
    train_x, train_y = train_x.to(device), train_y.to(device)
    if vectorized is None:
        vectorized = should_vectorize(len(seeds), device)
    if vectorized:
        budget = memory_budget if memory_budget is not None else default_memory_budget(device)
        shape = (channels, *im_size)
        chunk = models_per_step(model_name, shape, num_classes, min(settings.batch, len(train_x)), budget,
                                None if teacher is None else inference_memory(teacher, shape))
        for start in range(0, len(nets), chunk):
            part = slice(start, start + chunk)
            callback = None if on_epoch is None else (lambda m, e, lr, loss, s=start: on_epoch(s + m, e, lr, loss))
            train_stacked(nets[part], train_x, train_y, settings, seeds[part], callback, teacher)
        return nets
    for i, (net, seed) in enumerate(zip(nets, seeds)):
        callback = None if on_epoch is None else (lambda e, lr, loss, i=i: on_epoch(i, e, lr, loss))
        train_network(net, train_x, train_y, settings, seed, callback, teacher)
    return nets


def default_memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * CUDA_BUDGET_FRACTION)
    return CPU_BUDGET_BYTES


def models_per_step(model: str, shape: tuple[int, int, int], num_classes: int, batch: int, budget: int,
                    teacher: TeacherMemory | None = None) -> int:
    """How many models one vectorised step can hold in ``budget`` bytes (at least one): the
    activation memory of a batch depends on the architecture and the resolution. A teacher
    (soft labels) holds its weights once and labels every model's batch in the same step."""
    step = training_bytes_per_image(model, shape, num_classes) * batch
    if teacher is not None:
        budget -= teacher.weights
        step += teacher.per_image * batch
    return max(1, budget // step)


def train_and_score_many(
    model_name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    settings: TrainSettings,
    seeds: Sequence[int],
    device: torch.device | str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    vectorized: bool | None = None,
    on_epoch: ManyEpochCallback | None = None,
    memory_budget: int | None = None,
    teacher: nn.Module | None = None,
) -> list[float]:
    """Test accuracy of one fresh ``model_name`` per seed, trained together when that is faster.

    ``vectorized=None`` picks the faster path (``should_vectorize``); True forces the
    vectorised path (torch.func vmap over stacked parameters, as many models per step as
    ``memory_budget`` holds), False trains the models one after the other.
    Both give each model the draws of ``train_and_score`` with its seed. Every network of
    the zoo vmaps, BatchNorm included: its running statistics are stacked per model.
    ``teacher``: as in ``train_and_score``.
    """
    if len(seeds) == 0:
        raise ValueError("seeds is empty: pass at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (repeated seeds train identical models), got {list(seeds)}")
    device = torch.device(device)
    check_inputs(train_x, train_y, test_x, test_y, channels, num_classes, im_size, mean, std)
    nets = train_many(
        model_name, train_x, train_y, channels=channels, num_classes=num_classes, im_size=im_size,
        settings=settings, seeds=seeds, device=device, vectorized=vectorized, on_epoch=on_epoch,
        memory_budget=memory_budget, teacher=teacher,
    )
    return score_networks(nets, test_x, test_y, settings, device, mean, std)
