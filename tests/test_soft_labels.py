"""Soft-label training: a frozen teacher relabels every augmented batch, the student minimises
T^2 * KL(teacher || student) of the temperature-softened distributions."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from workers.data.types import DatasetInfo
from workers.training.evaluation import Placement, train_and_score, train_networks
from workers.training.optimizers import make_sgd
from workers.training.plain import fresh_network, train_network, train_step
from workers.training.settings import ModelStreams, TrainSettings

from .test_host_sync import _recorded

NET = "ConvNetW32"
DIGITS = dict(channels=1, num_classes=10, im_size=(8, 8))
INFO = DatasetInfo("digits", [str(c) for c in range(10)], 1, (8, 8), (0.0,), (1.0,), (40,) * 10, (1,) * 10)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: a second thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits, normalised: 40 training images per class, the rest for testing."""
    data = load_digits()
    images = torch.tensor(data.images / 16, dtype=torch.float32)[:, None]
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train = torch.cat([order[labels[order] == c][:40] for c in range(10)])
    test = order[~torch.isin(order, train)]
    x = (images - images[train].mean()) / images[train].std()
    return x[train], labels[train], x[test], labels[test]


def shifted_class_means_teacher(train_x: torch.Tensor, train_y: torch.Tensor, scale: float = 0.3) -> nn.Module:
    """A nearest-class-mean classifier on the pixels that names class c+1 where it sees c: its
    labels disagree with the true ones everywhere, so a student that matches it learned from it."""
    flat = train_x.flatten(1)
    means = torch.stack([flat[train_y == c].mean(0) for c in range(10)]).roll(1, dims=0)
    linear = nn.Linear(flat.shape[1], 10)
    with torch.no_grad():  # -scale * |x - mean_c|^2 up to a term shared by every class
        linear.weight.copy_(2 * scale * means)
        linear.bias.copy_(-scale * (means**2).sum(1))
    return nn.Sequential(nn.Flatten(), linear)


class FixedLogits(nn.Module):
    """Logits ``x.flatten(1) @ weight``: any chosen logits for one-hot inputs."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


def test_loss_is_the_hand_computed_tempered_kl_times_t_squared():
    """T = 2. Image 0: teacher logits (2 ln 3, 0) -> softmax(t/T) = (3/4, 1/4); student logits
    (0, 0) -> (1/2, 1/2); KL = 3/4 ln(3/2) + 1/4 ln(1/2). Image 1: teacher and student agree on
    (1/2, 1/2): KL = 0. The batch loss is T^2 times the mean of the two."""
    x = torch.eye(2).view(2, 1, 1, 2)
    student = FixedLogits(torch.zeros(2, 2))
    teacher = FixedLogits(torch.tensor([[2 * math.log(3), 0.0], [0.0, 0.0]]))
    settings = TrainSettings(epochs=1, batch=2, dsa_strategy="none", labels="soft", temperature=2.0)
    loss = train_step(student, make_sgd(student.parameters(), settings, settings.lr), x, torch.tensor([0, 1]),
                      torch.arange(2), settings, ModelStreams.for_seed(0, torch.device("cpu")), teacher)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812...
    assert loss.item() == pytest.approx(4 * kl / 2, rel=1e-6)


def test_epoch_loss_is_the_soft_loss_and_the_teacher_stays_frozen():
    x = torch.eye(2).view(2, 1, 1, 2)
    teacher = FixedLogits(torch.tensor([[2 * math.log(3), 0.0], [0.0, 0.0]]))
    before = teacher.weight.detach().clone()
    losses: list[float] = []
    train_network(FixedLogits(torch.zeros(2, 2)), x, torch.tensor([0, 1]),
                  TrainSettings(epochs=1, batch=2, dsa_strategy="none", labels="soft", temperature=2.0),
                  seed=0, on_epoch=lambda e, lr, loss: losses.append(loss), teacher=teacher)
    assert losses == pytest.approx([2 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))], rel=1e-6)
    assert torch.equal(teacher.weight, before) and teacher.weight.grad is None
    assert not teacher.training


def test_teacher_labels_exactly_the_augmented_images_the_student_sees(digits):
    train_x, train_y, *_ = digits
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    student = fresh_network(NET, **DIGITS, seed=0, device="cpu")
    teacher = shifted_class_means_teacher(train_x, train_y)
    student.register_forward_pre_hook(lambda m, args: seen["student"].append(args[0].clone()))
    teacher.register_forward_pre_hook(lambda m, args: seen["teacher"].append(args[0].clone()))
    train_network(student, train_x[:128], train_y[:128], TrainSettings(epochs=1, batch=64, labels="soft"),
                  seed=0, teacher=teacher)
    assert len(seen["student"]) == len(seen["teacher"]) == 2
    for s, t in zip(seen["student"], seen["teacher"]):
        assert torch.equal(s, t)
    assert not torch.equal(seen["student"][0], train_x[:64])  # DSA did change them


def test_student_learns_the_teacher_not_the_labels(digits):
    train_x, train_y, test_x, test_y = digits
    teacher = shifted_class_means_teacher(train_x, train_y).eval()
    with torch.no_grad():
        taught = teacher(test_x).argmax(1)
    assert (taught == (test_y + 1) % 10).float().mean() > 0.8  # the teacher is good, one class off

    student = fresh_network(NET, **DIGITS, seed=1, device="cpu").eval()
    with torch.no_grad():
        before = (student(test_x).argmax(1) == taught).float().mean().item()
    train_network(student, train_x, train_y, TrainSettings(epochs=8, batch=64, labels="soft"), seed=1,
                  teacher=teacher)
    with torch.no_grad():
        predicted = student.eval()(test_x).argmax(1)
    agreement = (predicted == taught).float().mean().item()
    assert before < 0.2 and agreement > 0.5
    assert (predicted == test_y).float().mean() < 0.2  # the hard labels it was given went unused


def test_one_soft_label_step_never_waits_for_the_device(digits):
    train_x, train_y, *_ = digits
    settings = TrainSettings(epochs=1, batch=16, labels="soft")
    net = fresh_network(NET, **DIGITS, seed=0, device="cpu")
    optimizer, streams = make_sgd(net.parameters(), settings, settings.lr), ModelStreams.for_seed(0, torch.device("cpu"))
    teacher = shifted_class_means_teacher(train_x, train_y).eval()
    idx = torch.randperm(len(train_x))[:16]
    assert _recorded(lambda: train_step(net, optimizer, train_x, train_y, idx, settings, streams, teacher)) == []


def _max_gap(a: nn.Module, b: nn.Module) -> float:
    pairs = zip((*a.parameters(), *a.buffers()), (*b.parameters(), *b.buffers()))
    return max((x.double() - y.double()).abs().max().item() for x, y in pairs)


@pytest.mark.parametrize("model", [NET, "ConvNetW32BN"])
def test_vectorised_soft_label_training_matches_one_model_at_a_time(digits, model):
    train_x, train_y, *_ = digits
    teacher = shifted_class_means_teacher(train_x, train_y)
    settings = TrainSettings(epochs=3, batch=64, labels="soft", temperature=2.0)  # DSA, decay, restart
    losses: dict[bool, dict[tuple[int, int], float]] = {False: {}, True: {}}
    nets = {}
    for vectorized in (False, True):
        nets[vectorized] = train_networks(
            model, train_x, train_y, INFO, settings, [11, 12], Placement("cpu", vectorized), teacher=teacher,
            on_epoch=lambda m, e, lr, loss, v=vectorized: losses[v].__setitem__((m, e), loss))
    for one, many in zip(nets[False], nets[True]):
        assert _max_gap(one, many) < 1e-3
    assert _max_gap(nets[False][0], nets[False][1]) > 1e-2
    assert losses[True].keys() == losses[False].keys()
    for key, loss in losses[False].items():
        assert losses[True][key] == pytest.approx(loss, rel=1e-4)


def test_hard_labels_ignore_the_temperature_and_differ_from_soft(digits):
    train_x, train_y, *_ = digits

    def trained(settings: TrainSettings, teacher: nn.Module | None) -> nn.Module:
        return train_network(fresh_network(NET, **DIGITS, seed=2, device="cpu"), train_x[:128], train_y[:128],
                             settings, seed=2, teacher=teacher)

    hard = trained(TrainSettings(epochs=1, batch=64), None)
    assert _max_gap(hard, trained(TrainSettings(epochs=1, batch=64, temperature=7.0), None)) == 0
    soft = trained(TrainSettings(epochs=1, batch=64, labels="soft"), shifted_class_means_teacher(train_x, train_y))
    assert _max_gap(hard, soft) > 1e-5  # far above float rounding


def test_missing_or_misplaced_teacher_is_refused(digits):
    train_x, train_y, test_x, test_y = digits
    soft = TrainSettings(epochs=1, labels="soft")
    with pytest.raises(ValueError, match="no teacher was given"):
        train_and_score(NET, train_x, train_y, test_x, test_y, INFO, soft, [0])
    with pytest.raises(ValueError, match="no teacher was given"):
        train_and_score(NET, train_x, train_y, test_x, test_y, INFO, soft, [0, 1])
    with pytest.raises(ValueError, match="hard-label training"):
        train_and_score(NET, train_x, train_y, test_x, test_y, INFO, TrainSettings(epochs=1), [0],
                        teacher=shifted_class_means_teacher(train_x, train_y))
    five_classes = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ValueError, match="same 10 classes"):
        train_and_score(NET, train_x, train_y, test_x, test_y, INFO, soft, [0], teacher=five_classes)
