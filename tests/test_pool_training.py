"""Training a pool network: the kept states, their validation accuracy, forgetting events."""

from __future__ import annotations

import torch

from workers.data import normalize, open_dataset
from workers.pool_training import ForgettingCounter, Schedule, train_pool_network, validation_split
from workers.training.plain import fresh_network
from workers.training.settings import TrainSettings


def test_the_schedule_keeps_the_start_the_early_rise_every_n_steps_and_the_end():
    assert Schedule(10).steps(35) == [0, 1, 2, 4, 8, 10, 20, 30, 35]
    assert Schedule(10, early=False).steps(20) == [0, 10, 20]
    assert Schedule(50).steps(3) == [0, 1, 2, 3]


def test_forgetting_events_follow_the_presentations():
    counter = ForgettingCounter(4, torch.device("cpu"))
    idx = torch.arange(4)
    for correct in ([1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 1]):
        counter.update(idx, torch.tensor(correct, dtype=torch.bool))
    # example 0: right, wrong, right, wrong: forgotten twice; 1: never learned; 2: once; 3: learned, kept
    assert counter.events.tolist() == [2, 0, 1, 0]
    assert counter.learned.tolist() == [True, False, True, True]


def test_the_validation_split_is_per_class_and_fixed_by_its_seed():
    labels = [0] * 10 + [1] * 20
    train, val = validation_split(labels, 0.1, seed=3)
    assert sorted(train + val) == list(range(30)) and not set(train) & set(val)
    assert sum(labels[i] == 0 for i in val) == 1 and sum(labels[i] == 1 for i in val) == 2
    assert validation_split(labels, 0.1, seed=3) == (train, val) != validation_split(labels, 0.1, seed=4)


def test_a_pool_network_keeps_its_states_from_the_initialisation_with_their_accuracy():
    reader = open_dataset("digits")
    real = reader.read_train(range(10))
    train, val = validation_split(real.labels.tolist(), 0.1, seed=0)
    x, y = normalize(real.images, reader.info.mean, reader.info.std), real.labels
    settings = TrainSettings(epochs=2, batch=128, dsa_strategy=None)
    net = train_pool_network("ConvNetW32", x[train], y[train], x[val], y[val], channels=1, num_classes=10,
                             im_size=(8, 8), settings=settings, schedule=Schedule(4), seed=7, device=torch.device("cpu"))
    steps = 2 * -(-len(train) // 128)
    assert net.steps == Schedule(4).steps(steps) and len(net.states) == len(net.val_accuracy) == len(net.steps)
    fresh = fresh_network("ConvNetW32", channels=1, num_classes=10, im_size=(8, 8), seed=7, device="cpu")
    assert all(torch.equal(v, net.states[0][k]) for k, v in fresh.state_dict().items())  # step 0: the init
    assert net.val_accuracy[0] < 0.3 < net.val_accuracy[-1]  # it learns
    assert net.forgetting.shape == net.learned.shape == (len(train),) and net.learned.float().mean() > 0.5


def test_a_pool_network_resumed_from_an_epoch_checkpoint_gives_the_uninterrupted_bytes():
    reader = open_dataset("digits")
    real = reader.read_train(range(10))
    train, val = validation_split(real.labels.tolist(), 0.1, seed=0)
    x, y = normalize(real.images, reader.info.mean, reader.info.std), real.labels
    # 4 epochs: the optimizer restarts at epoch 2 (the decay), so a resume from epoch 1 must carry
    # the momentum and one from epoch 3 the new optimizer's; the augmentation streams carry too.
    settings = TrainSettings(epochs=4, batch=256, dsa_strategy="color_crop_cutout_flip_scale_rotate")
    args = dict(channels=1, num_classes=10, im_size=(8, 8), settings=settings, schedule=Schedule(3), seed=5,
                device=torch.device("cpu"))
    kept = []
    whole = train_pool_network("ConvNetW32", x[train], y[train], x[val], y[val], on_epoch=kept.append, **args)
    assert [ck.epochs_done for ck in kept] == [1, 2, 3]  # none after the last epoch: the commit follows
    for ck in (kept[0], kept[2]):
        resumed = train_pool_network("ConvNetW32", x[train], y[train], x[val], y[val], resume=ck, **args)
        assert resumed.steps == whole.steps and resumed.val_accuracy == whole.val_accuracy
        assert all(torch.equal(resumed.states[-1][k], v) for k, v in whole.states[-1].items())
        assert torch.equal(resumed.forgetting, whole.forgetting) and torch.equal(resumed.learned, whole.learned)
    # and a checkpoint is not the end: training from the first one alone moved the weights on
    assert not all(torch.equal(kept[0].network[k], v) for k, v in whole.states[-1].items())
