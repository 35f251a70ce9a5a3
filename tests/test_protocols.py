"""The named evaluation protocols: each trains with the optimizer, schedule, loss and
augmentation its cited source sets (workers.training.protocols), and is keyed and labelled apart."""

from __future__ import annotations

import math
import random

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from orchestrator.evaluation_plan import settings_key
from orchestrator.components.settings import set_settings, train_settings
from orchestrator.config import ConfigError, load_config
from workers.data.types import DatasetInfo
from workers.training.augmentation import crop_box, cutmix, maybe_augment, random_resized_crop, shuffle_patches
from workers.training.evaluation import Placement, train_and_score, train_networks
from workers.training.optimizers import make_optimizer, optimizer_for_epoch
from workers.training.plain import fresh_network, train_step
from workers.training.protocols import rded_batch
from workers.training.settings import ModelStreams, TrainSettings

NET = "ConvNetW32BN"  # norms and biases: RDED's weight decay leaves them out
INFO = DatasetInfo("digits", [str(c) for c in range(10)], 1, (8, 8), (0.0,), (1.0,), (20,) * 10, (1,) * 10)


def _evaluation(protocol: str, *sets: str) -> TrainSettings:
    return train_settings(load_config(None, [f"evaluate.protocol={protocol}", *sets]), "evaluate")


def test_rded_fixes_its_arguments_and_cosine_schedule():
    s = _evaluation("rded")
    assert (s.labels, s.temperature, s.lr, s.weight_decay, s.epochs) == ("soft", 20.0, 0.001, 0.01, 300)
    # LambdaLR(0.5 * (1 + cos(pi * epoch / epochs / 2))), stepped per epoch: half the rate at the end
    assert [s.lr_at(e) for e in (0, 150, 300)] == pytest.approx([0.001, 0.001 * (1 + math.sqrt(0.5)) / 2, 0.0005])


def test_ddranking_fixes_its_config():
    s = _evaluation("ddranking")
    assert (s.labels, s.temperature, s.lr, s.weight_decay, s.epochs) == ("soft", 1.0, 0.001, 0.01, 300)
    assert s.lr_at(300) == pytest.approx(0.0005)


def test_paper_protocol_settings_are_todays():
    s = _evaluation("paper")
    assert (s.labels, s.temperature, s.lr, s.weight_decay, s.epochs, s.protocol) == ("hard", 1.2, 0.01, 5e-4, 1000,
                                                                                      "paper")
    assert [s.lr_at(e) for e in (0, 499, 500, 999)] == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_a_value_set_beside_a_protocol_wins_and_a_bad_temperature_is_refused():
    s = _evaluation("rded", "evaluate.epochs=4", "evaluate.temperature=4")
    assert (s.epochs, s.temperature, s.lr) == (4, 4.0, 0.001)
    for bad in ("0", "-1", ".nan", ".inf"):
        with pytest.raises(ConfigError, match="temperature"):
            load_config(None, [f"evaluate.temperature={bad}"])


def test_rded_batch_follows_its_argument_rules():
    assert [rded_batch(ipc, 10, 256) for ipc in (1, 10, 50)] == [10, 50, 100]
    assert rded_batch(10, 100, 256) == 100 and rded_batch(50, 1000, 256) == 200
    assert rded_batch(2, 3, 256) == 6  # no rule: the config's batch, at most the set
    cfg = load_config(None, ["evaluate.protocol=rded", "condense.ipc=10"])
    assert set_settings(cfg, "random", 10).batch == 50
    assert set_settings(load_config(None, ["condense.ipc=10"]), "random", 10).batch == 256


def test_every_protocol_has_its_own_settings_key_and_the_papers_is_unchanged():
    keys = {p: settings_key(load_config(None, [f"evaluate.protocol={p}"])) for p in ("paper", "rded", "ddranking")}
    assert len(set(keys.values())) == 3
    assert keys["paper"] == settings_key(load_config(None, []))


def test_adamw_decays_rdeds_weight_matrices_only_and_ddrankings_everything():
    net = fresh_network(NET, channels=1, num_classes=10, im_size=(8, 8), seed=0, device="cpu")
    named = list(net.named_parameters())
    rded = make_optimizer(named, TrainSettings(protocol="rded", weight_decay=0.01), 0.001)
    decayed, kept = rded.param_groups
    assert isinstance(rded, torch.optim.AdamW) and (decayed["weight_decay"], kept["weight_decay"]) == (0.01, 0.0)
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() == 1 for p in kept["params"])
    assert len(decayed["params"]) + len(kept["params"]) == len(named) and kept["params"]
    dd = make_optimizer(named, TrainSettings(protocol="ddranking", weight_decay=0.01), 0.001)
    assert [g["weight_decay"] for g in dd.param_groups] == [0.01] and dd.defaults["betas"] == (0.9, 0.999)


def test_the_cosine_protocols_keep_one_optimizer_and_set_its_rate_each_epoch():
    net = nn.Linear(2, 2)
    named = list(net.named_parameters())
    s = TrainSettings(protocol="rded", epochs=10, lr=0.1)
    first = optimizer_for_epoch(None, named, s, 0)
    assert optimizer_for_epoch(first, named, s, 5) is first
    assert [g["lr"] for g in first.param_groups] == pytest.approx([s.lr_at(5)] * 2)
    paper = TrainSettings(epochs=10)
    sgd = optimizer_for_epoch(None, named, paper, 0)
    assert optimizer_for_epoch(sgd, named, paper, 5) is not sgd  # the paper's code restarts it at the decay


class FixedLogits(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


@pytest.mark.parametrize("protocol", ["rded", "ddranking"])
def test_soft_protocols_minimise_the_tempered_kl_unscaled(protocol):
    """T = 20: teacher logits (20 ln 3, 0) -> (3/4, 1/4); student (0, 0) -> (1/2, 1/2); the other image
    agrees. KLDivLoss(batchmean) is the mean of the per-image KL, not multiplied by T^2."""
    x = torch.eye(2).view(2, 1, 1, 2)
    student = FixedLogits(torch.zeros(2, 2))
    teacher = FixedLogits(torch.tensor([[20 * math.log(3), 0.0], [0.0, 0.0]]))
    settings = TrainSettings(protocol=protocol, labels="soft", temperature=20.0, dsa_strategy=None)
    optimizer = make_optimizer(list(student.named_parameters()), settings, 0.001)
    loss = train_step(student, optimizer, x, torch.tensor([0, 1]), torch.arange(2), settings,
                      ModelStreams.for_seed(0, torch.device("cpu")), teacher)
    assert loss.item() == pytest.approx((0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2, rel=1e-6)


def _quadrants() -> torch.Tensor:
    """A 1x4x4 image whose four 2x2 quadrants hold 0, 1, 2, 3."""
    return torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], dtype=torch.float32)[None]


def test_patch_shuffling_permutes_the_patches_and_factor_one_keeps_the_image():
    img, rng, seen = _quadrants(), random.Random(0), set()
    for _ in range(40):
        out = shuffle_patches(img, 2, rng)
        patches = out[0, ::2, ::2]  # one pixel per patch: each patch moved whole
        assert torch.equal(out, patches.repeat_interleave(2, 0).repeat_interleave(2, 1)[None])
        assert sorted(patches.flatten().tolist()) == [0, 1, 2, 3]
        seen.add(tuple(patches.flatten().tolist()))
    assert seen == {(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)}  # columns swapped, rows swapped
    assert torch.equal(shuffle_patches(img, 1, rng), img)


def test_random_resized_crop_draws_torchvisions_boxes():
    rng = random.Random(1)
    for _ in range(200):
        top, left, h, w = crop_box(32, 32, (0.25, 1.0), rng)
        assert 0 <= top <= 32 - h and 0 <= left <= 32 - w
        assert 0.25 * 1024 * 0.9 <= h * w <= 1024 and 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
    img = torch.randn(3, 32, 32)
    assert torch.equal(random_resized_crop(img, (1.0, 1.0), rng), img)  # RDED at factor 1: the whole image


def test_cutmix_pastes_one_box_from_a_permutation_of_the_batch():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 16, 16).clone()
    mixed = cutmix(x, random.Random(3))
    changed = (mixed != x).any(0)[0]  # the box: where some image took another's pixels
    rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
    assert changed.any() and changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    sources = mixed[:, 0][:, changed][:, 0]
    assert sorted(sources.tolist()) == [0, 1, 2, 3]  # a permutation of the batch
    assert torch.equal(mixed[:, :, ~changed], x[:, :, ~changed])


def test_each_protocol_augments_as_its_code_does():
    one = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    streams = ModelStreams.for_seed(0, torch.device("cpu"))
    # a batch of one: CutMix pastes the image onto itself, so DD-Ranking's tensors stay as they are
    dd = TrainSettings(protocol="ddranking")
    assert all(torch.equal(maybe_augment(one, dd, streams), one) for _ in range(10))
    # RDED adds its flips (and patches at factor 2)
    rded = [maybe_augment(one, TrainSettings(protocol="rded"), streams) for _ in range(20)]
    assert any(torch.equal(r, one.flip(-1)) for r in rded) and any(torch.equal(r, one) for r in rded)
    assert torch.equal(maybe_augment(one, TrainSettings(protocol="rded", dsa_strategy=None), streams), one)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, ...]:
    data = load_digits()
    images = torch.tensor(data.images / 16, dtype=torch.float32)[:, None]
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train = torch.cat([order[labels[order] == c][:20] for c in range(10)])
    test = order[~torch.isin(order, train)][:400]
    x = (images - images[train].mean()) / images[train].std()
    return x[train], labels[train], x[test], labels[test]


def _teacher(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> nn.Module:
    """Nearest class mean on the pixels: a fair teacher of the digits (about 90%); its logits times
    ``scale``, so that labels softened at T = scale are as sharp as at T = 1."""
    means = torch.stack([x.flatten(1)[y == c].mean(0) for c in range(10)])
    linear = nn.Linear(64, 10)
    with torch.no_grad():
        linear.weight.copy_(2 * scale * means)
        linear.bias.copy_(-scale * (means**2).sum(1))
    return nn.Sequential(nn.Flatten(), linear)


@pytest.mark.parametrize("protocol", ["paper", "rded", "ddranking"])
def test_a_short_evaluation_under_each_protocol_learns_the_digits(digits, protocol):
    train_x, train_y, test_x, test_y = digits
    cfg = load_config(None, [f"evaluate.protocol={protocol}", "evaluate.epochs=80", "condense.ipc=1"])
    settings = set_settings(cfg, "random", 10)
    if protocol == "paper":  # the paper's lr needs more than 200 images x 80 epochs; its rate is tested above
        settings = TrainSettings(epochs=80, batch=64, lr=0.05, dsa_strategy=None)
    teacher = None if settings.labels == "hard" else _teacher(train_x, train_y, settings.temperature)
    accs = train_and_score("ConvNetW32", train_x, train_y, test_x, test_y, INFO, settings, [0], teacher=teacher)
    assert accs[0] > 0.5, accs  # chance is 0.1


def test_rded_trains_stacked_models_as_one_at_a_time(digits):
    """CutMix, crops and flips per model from its own stream; AdamW with RDED's two groups over the stack."""
    train_x, train_y, *_ = digits
    settings = TrainSettings(protocol="rded", labels="soft", temperature=20.0, lr=0.001, weight_decay=0.01,
                             epochs=2, batch=50, patch_factor=2)
    teacher = _teacher(train_x, train_y)
    looped = train_networks(NET, train_x, train_y, INFO, settings, [1, 2], Placement("cpu", False), teacher=teacher)
    stacked = train_networks(NET, train_x, train_y, INFO, settings, [1, 2], Placement("cpu", True), teacher=teacher)
    def gap(a: nn.Module, b: nn.Module) -> float:
        pairs = zip(a.state_dict().values(), b.state_dict().values())
        return max((x - y).abs().max().item() for x, y in pairs if x.is_floating_point())

    for one, many in zip(looped, stacked):
        assert gap(one, many) < 1e-3  # float rounding, which Adam's normalised steps carry further than SGD's
    assert gap(looped[0], looped[1]) > 1e-2
