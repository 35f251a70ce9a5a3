"""Training and scoring fresh networks: the protocol, determinism, and vectorised == looped."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from workers.data.types import DatasetInfo
from workers.network_costs import training_bytes_per_image
from workers.training import vectorized as vectorized_path
from workers.training.evaluation import Placement, train_and_score, train_networks
from workers.training.memory import models_per_step
from workers.training.settings import TrainSettings
from workers.training.vectorized import should_vectorize

NET = "ConvNetW32"  # the paper's ConvNet, narrower so the tests stay fast
CPU = Placement("cpu")
LOOPED, STACKED = Placement("cpu", vectorized=False), Placement("cpu", vectorized=True)


def digits_info(mean: float, std: float) -> DatasetInfo:
    return DatasetInfo("digits", [str(c) for c in range(10)], 1, (8, 8), (mean,), (std,), (40,) * 10, (1,) * 10)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, DatasetInfo]:
    """sklearn digits as uint8 8x8 images: 40 training images per class, the rest for testing."""
    data = load_digits()
    images = torch.tensor(data.images * 255 / 16, dtype=torch.float32).round().to(torch.uint8)[:, None]
    labels = torch.tensor(data.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=gen)
    train = torch.cat([order[labels[order] == c][:40] for c in range(10)])
    test = order[~torch.isin(order, train)]
    mean, std = images[train].float().div(255).mean().item(), images[train].float().div(255).std().item()
    train_x = (images[train].float() / 255 - mean) / std
    return train_x, labels[train], images[test], labels[test], digits_info(mean, std)


def _normalised(x_u8: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    return (x_u8.float() / 255 - info.mean[0]) / info.std[0]


def test_learns_digits_well_above_chance(digits):
    train_x, train_y, test_u8, test_y, info = digits
    [acc] = train_and_score(NET, train_x, train_y, test_u8, test_y, info, TrainSettings(epochs=8, batch=64), [0])
    assert acc > 0.6  # chance is 0.1


def test_same_seed_same_result_and_other_seed_differs(digits):
    train_x, train_y, test_u8, test_y, info = digits
    test_x = _normalised(test_u8, info)
    settings = TrainSettings(epochs=2, batch=64)
    runs = []
    for seed in (3, 3, 4):
        losses: list[float] = []
        [acc] = train_and_score(NET, train_x, train_y, test_x, test_y, info, settings, [seed],
                                on_epoch=lambda m, e, lr, loss: losses.append(loss))
        runs.append((acc, losses))
    assert runs[0] == runs[1]
    assert runs[0][1] != runs[2][1]


def test_lr_drops_tenfold_at_half_of_the_epochs(digits):
    train_x, train_y, test_u8, test_y, info = digits
    for epochs, decay in ((4, 2), (5, 2)):
        lrs: list[float] = []
        train_and_score(NET, train_x[:20], train_y[:20], test_u8[:20], test_y[:20], info,
                        TrainSettings(epochs=epochs, lr=0.02, dsa_strategy="none"), [0],
                        on_epoch=lambda m, e, lr, loss: lrs.append(lr))
        assert lrs == pytest.approx([0.02] * decay + [0.002] * (epochs - decay))


def test_uint8_test_split_scores_like_its_float_version(digits):
    train_x, train_y, test_u8, test_y, info = digits
    settings = TrainSettings(epochs=1, batch=64, test_batch=37)  # several uneven test batches
    from_u8 = train_and_score(NET, train_x, train_y, test_u8, test_y, info, settings, [1])
    from_float = train_and_score(NET, train_x, train_y, _normalised(test_u8, info), test_y, info, settings, [1])
    assert from_u8 == pytest.approx(from_float, abs=1.5 / len(test_y))


def test_bad_inputs_are_named(digits):
    train_x, train_y, test_u8, test_y, info = digits
    settings = TrainSettings(epochs=1)
    with pytest.raises(ValueError, match="train_y"):
        train_and_score(NET, train_x, train_y[:-1], test_u8, test_y, info, settings, [0])
    with pytest.raises(ValueError, match=r"test_x must be \[N, 1, 8, 8\]"):
        train_and_score(NET, train_x, train_y, test_u8[:, :, :4], test_y, info, settings, [0])
    with pytest.raises(ValueError, match="normalise it first"):
        train_and_score(NET, test_u8[: len(train_y)], train_y, test_u8, test_y, info, settings, [0])


def _max_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip((*a.parameters(), *a.buffers()), (*b.parameters(), *b.buffers()))
    return max((x.double() - y.double()).abs().max().item() for x, y in pairs)


@pytest.mark.parametrize("model", [NET, "ConvNetW32BN"])
def test_vectorised_training_matches_one_model_at_a_time(digits, model):
    """Same seeds -> same initial parameters, batch orders and DSA draws on both paths, so
    model m must end where it ends alone, up to float rounding; the models differ from
    each other by far more than that, so the check is not vacuous."""
    train_x, train_y, *_, info = digits
    settings = TrainSettings(epochs=4, batch=64)  # DSA on, lr decay and momentum restart included
    seeds = [11, 12, 13]
    looped = train_networks(model, train_x, train_y, info, settings, seeds, LOOPED)
    stacked = train_networks(model, train_x, train_y, info, settings, seeds, STACKED)
    for one, many in zip(looped, stacked):
        assert _max_gap(one, many) < 1e-3
    assert _max_gap(looped[0], looped[1]) > 1e-2


def test_vectorised_accuracies_and_losses_match_looped(digits):
    train_x, train_y, test_u8, test_y, info = digits
    settings = TrainSettings(epochs=3, batch=64)
    results = {}
    for placement in (LOOPED, STACKED):
        losses: dict[tuple[int, int], float] = {}
        accs = train_and_score(NET, train_x, train_y, test_u8, test_y, info, settings, [5, 6], placement,
                               on_epoch=lambda m, e, lr, loss: losses.__setitem__((m, e), loss))
        results[placement.vectorized] = (accs, losses)
    (accs_loop, losses_loop), (accs_vec, losses_vec) = results[False], results[True]
    assert accs_vec == pytest.approx(accs_loop, abs=2 / len(test_y))
    assert losses_vec.keys() == losses_loop.keys() == {(m, e) for m in range(2) for e in range(3)}
    for key, loss in losses_loop.items():
        assert losses_vec[key] == pytest.approx(loss, rel=1e-4)


def test_rejects_repeated_seeds(digits):
    train_x, train_y, test_u8, test_y, info = digits
    with pytest.raises(ValueError, match="distinct"):
        train_and_score(NET, train_x, train_y, test_u8, test_y, info, TrainSettings(epochs=1), [1, 1])


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        TrainSettings().epochs = 3  # type: ignore[misc]


def test_vectorised_models_are_trained_in_chunks_that_bound_memory(digits, monkeypatch):
    train_x, train_y, *_, info = digits
    settings, seeds = TrainSettings(epochs=1, batch=64), [1, 2, 3]
    whole = train_networks(NET, train_x, train_y, info, settings, seeds, STACKED)
    steps: list[int] = []
    real = vectorized_path.train_stacked
    monkeypatch.setattr(vectorized_path, "train_stacked",
                        lambda nets, *a, **k: steps.append(len(nets)) or real(nets, *a, **k))
    two = 2 * 64 * training_bytes_per_image(NET, (1, 8, 8), 10)  # 2 models of 64 images per step
    seen: set[int] = set()
    chunked = train_networks(NET, train_x, train_y, info, settings, seeds, Placement("cpu", True, two),
                             on_epoch=lambda m, e, lr, loss: seen.add(m))
    assert steps == [2, 1] and seen == {0, 1, 2}
    for a, b in zip(whole, chunked):
        assert _max_gap(a, b) < 1e-4


def test_models_per_step_follow_the_architecture_the_resolution_and_the_budget():
    share = (24 << 30) // 4  # a 24 GiB GPU shared by 4 evaluation actors
    small = models_per_step("ConvNet", (3, 32, 32), 10, 256, share)
    large = models_per_step("ConvNetD4", (3, 64, 64), 1000, 256, share)
    assert small >= 4 * large >= 4
    assert models_per_step("ConvNet", (3, 32, 32), 10, 256, share // 4) < small  # fewer with more actors per GPU
    assert models_per_step("ResNet18", (3, 64, 64), 1000, 256, 1) == 1  # at least one, however small the budget


def test_training_memory_per_image_counts_every_layer_by_hand():
    # ConvNetW32 on 1x8x8 (3 blocks, padding 3 on the grey first layer: 12 -> 6 -> 3 -> 1) plus the classifier
    block1, block2, block3 = 3 * 32 * 12 * 12 + 32 * 6 * 6, 3 * 32 * 6 * 6 + 32 * 3 * 3, 3 * 32 * 3 * 3 + 32
    kept = 64 + block1 + block2 + block3 + 10
    assert training_bytes_per_image("ConvNetW32", (1, 8, 8), 10) == 2 * 4 * kept


def test_auto_path_vectorises_several_models_on_cuda_only():
    # bench_eval: on the CPU the looped path is faster at 1, 10 and 50 images per class
    assert should_vectorize(5, torch.device("cuda"))
    assert not should_vectorize(1, torch.device("cuda"))
    assert not should_vectorize(5, torch.device("cpu"))
