"""The successor papers' pieces against hand-computed values: NCFM's distance and its min-max
sampler, M3D's Gaussian MMD at DM's gradient scale, IDM's queue of networks trained on the fly."""

from __future__ import annotations

import io
import math

import pytest
import torch

from workers import matching, model_queue
from workers.dm import DMCondenser, DMSettings
from workers.frequency_sampler import ROWS, FrequencySampler, ascend, sampler_optimizer
from workers.matching import cfd, gaussian_frequencies, mmd

from .test_dm import tiny_set


# ------------------------------------------------------------------ NCFM
def test_cfd_is_the_papers_amplitude_and_phase_distance_by_hand():
    real = torch.tensor([[[3.0, 0.0], [0.0, 2.0]]])  # unit length after scaling: (1, 0), (0, 1)
    syn = torch.tensor([[[0.0, -5.0]]])  # (0, -1)
    t = torch.tensor([[[1.0, 0.5]]])  # one frequency
    # t.x: real 1.0 and 0.5, synthetic -0.5
    phi_r = complex((math.cos(1.0) + math.cos(0.5)) / 2, (math.sin(1.0) + math.sin(0.5)) / 2)
    phi_s = complex(math.cos(-0.5), math.sin(-0.5))
    w = torch.ones(1, 2)
    # alpha = beta = 1: amplitude + phase = |phi_r - phi_s|^2
    assert float(cfd(real, w, syn, t, 1.0, 1.0)) == pytest.approx(300 * abs(phi_r - phi_s), rel=1e-5)
    # amplitude alone: | |phi_r| - |phi_s| |
    assert float(cfd(real, w, syn, t, 1.0, 0.0)) == pytest.approx(300 * abs(abs(phi_r) - abs(phi_s)), rel=1e-5)
    # the paper's 0.5 / 0.5: the root of half the squared distance
    assert float(cfd(real, w, syn, t)) == pytest.approx(300 * abs(phi_r - phi_s) / math.sqrt(2), rel=1e-5)


def test_cfd_tells_two_gaussians_apart_far_above_two_samples_of_one():
    """At the paper's frequency scale (unit-length embeddings, standard Gaussian t) the distance
    measures the distributions: between two samples of one it is the sampling noise, between
    two Gaussians of other means several times that. Embeddings like a ConvNet's: D = 2,048,
    256 real rows against 40 synthetic."""
    g = torch.Generator().manual_seed(0)
    d = 2048
    mean_a, mean_b = torch.randn(d, generator=g), torch.randn(d, generator=g)
    real = mean_a + torch.randn(1, 256, d, generator=g)
    same = mean_a + torch.randn(1, 40, d, generator=g)
    other = mean_b + torch.randn(1, 40, d, generator=g)
    w, t = torch.ones(1, 256), gaussian_frequencies(4096, d, g, torch.device("cpu"))
    assert float(cfd(real, w, other, t)) > 3 * float(cfd(real, w, same, t))


def test_each_class_has_its_own_sampler_and_the_sampler_ascends_the_distance():
    g = torch.Generator().manual_seed(1)
    real, syn, w = torch.randn(2, 30, 8, generator=g), torch.randn(2, 4, 8, generator=g), torch.ones(2, 30)
    sampler = FrequencySampler([3, 7], 8, seed=5)
    noise = lambda c: torch.Generator().manual_seed(c)  # noqa: E731
    assert sampler(noise).shape == (2, ROWS, 8)
    assert torch.equal(FrequencySampler([7], 8, seed=5).weight[:, 0], sampler.weight[:, 1])  # any grouping
    # class 7's loss reaches class 7's sampler only
    one, = torch.autograd.grad(cfd(real[1:], w[1:], syn[1:], sampler(noise)[1:]), sampler.weight)
    assert one[:, 0].abs().max() == 0 and one[:, 1].abs().max() > 0
    optimizer = sampler_optimizer(sampler)
    before = cfd(real, w, syn, sampler(noise))
    for _ in range(20):  # the images' step is left out: the max half of the min-max alone
        cfd(real, w, syn, sampler(noise)).backward()
        ascend(sampler, optimizer)
    assert float(cfd(real, w, syn, sampler(noise)).detach()) > float(before.detach())


def test_the_condensers_sampler_trains_against_its_images_and_checkpoints():
    real, info = tiny_set(per_class=20)
    settings = DMSettings(ipc=2, iterations=4, batch_real=5, model="ConvNetW32", loss="cfd", cfd_sampler=True)
    condenser = DMCondenser(real, info, [0, 1, 2], settings, seed=4)
    start = condenser.sampler.weight.detach().clone()
    condenser.run()
    assert not torch.equal(start, condenser.sampler.weight)
    state = condenser.state_dict()
    fresh = DMCondenser(real, info, [0, 1, 2], settings, seed=4)
    fresh.load_state_dict(torch.load(io.BytesIO(_saved(state)), weights_only=False))
    assert torch.equal(fresh.sampler.weight, condenser.sampler.weight)
    with pytest.raises(ValueError, match="cfd_sampler learns the frequencies"):
        DMSettings(ipc=1, iterations=1, cfd_sampler=True)


# ------------------------------------------------------------------ M3D
def test_a_wide_gaussian_kernels_mmd_is_dms_mean_loss(monkeypatch):
    """(h / 2) exp(-d / h) ~ h / 2 - d / 2: as h grows the MMD² tends to |mean_r - mean_s|², so the
    recipe's gradient is of DM's size (the bare kernel's is 1/h of it)."""
    g = torch.Generator().manual_seed(2)
    real, syn = torch.randn(2, 50, 6, generator=g).double(), (torch.randn(2, 5, 6, generator=g) + 0.3).double()
    w = torch.ones(2, 50, dtype=torch.float64)
    means = ((real.mean(1) - syn.mean(1)) ** 2).sum()
    assert float(mmd(real, w, syn, "rbf")) != pytest.approx(float(means), rel=0.05)  # the paper's widths differ
    monkeypatch.setattr(matching, "RBF_SCALES", (1e6,))  # a kernel 10^6 times the spread: the limit
    assert float(mmd(real, w, syn, "rbf")) == pytest.approx(float(means), rel=1e-4)


def test_the_gaussian_mmd_sees_a_spread_that_the_means_miss_with_a_gradient_of_dms_size():
    g = torch.Generator().manual_seed(3)
    real = 10 * torch.randn(1, 200, 16, generator=g)  # embeddings of a ConvNet's size
    narrow = (real.mean(1, keepdim=True) + 0.1 * torch.randn(1, 8, 16, generator=g)).requires_grad_()  # 1/100 the spread
    w = torch.ones(1, 200)
    assert float(mmd(real, w, narrow, "rbf").detach()) > 100 * float(mmd(real, w, narrow, "linear").detach())
    shifted = (real[:, :8] + 5).clone().requires_grad_()
    rbf, = torch.autograd.grad(mmd(real, w, shifted, "rbf"), shifted)
    linear, = torch.autograd.grad(mmd(real, w, shifted, "linear"), shifted)
    assert 0.1 < float(rbf.norm() / linear.norm()) < 10


# ------------------------------------------------------------------ IDM
def test_the_queue_grows_every_push_interval_trains_two_networks_and_resumes(monkeypatch):
    monkeypatch.setattr(model_queue, "PUSH_EVERY", 2)
    monkeypatch.setattr(model_queue, "SIZE", 5)
    monkeypatch.setattr(model_queue, "TRAIN_STEPS", 2)
    real, info = tiny_set(per_class=20)
    settings = DMSettings(ipc=1, iterations=5, batch_real=5, model="ConvNetW32", networks="queue",
                          ce_weight=0.5, ce_network="matching")
    condenser = DMCondenser(real, info, [0, 1, 2], settings, seed=4)
    queue = condenser.networks
    assert len(queue.members) == model_queue.START + 1
    before = [dict(m.params) for m in queue.members]
    queue.after_step(0)  # iteration 0: two networks trained, none added yet
    changed = [i for i, m in enumerate(queue.members) if not torch.equal(m.params["classifier.weight"],
                                                                          before[i]["classifier.weight"])]
    assert len(changed) == model_queue.TRAIN_NETWORKS and len(queue.members) == 4
    assert all(0 <= queue.accuracy(i) <= 100 and queue.members[i].seen == 2 * 60 for i in changed)
    queue.after_step(1)  # the end of iteration 1: the network of iteration 2 joins, the oldest leaves at 6
    assert len(queue.members) == 5 and queue.created == 5

    whole = DMCondenser(real, info, [0, 1, 2], settings, seed=4)
    whole.run()
    first = DMCondenser(real, info, [0, 1, 2], settings, seed=4)
    first.run(until=3)
    resumed = DMCondenser(real, info, [0, 1, 2], settings, seed=4)
    resumed.load_state_dict(torch.load(io.BytesIO(_saved(first.state_dict())), weights_only=False))
    resumed.run()
    assert torch.equal(resumed.syn, whole.syn) and whole.networks.created == 4 + 2  # pushed after 1 and 3
    assert len(whole.networks.members) == model_queue.SIZE


def test_the_queues_cross_entropy_is_weighted_by_the_networks_accuracy_in_percent():
    real, info = tiny_set(per_class=20)
    settings = DMSettings(ipc=1, iterations=1, batch_real=5, model="ConvNetW32", networks="queue",
                          ce_weight=1.0, ce_network="matching")
    condenser = DMCondenser(real, info, [0, 1, 2], settings, seed=4)
    draw = condenser.draw()
    member = condenser.networks.members[draw.network]
    untrained = float(condenser.loss(draw).detach())  # accuracy 0 before any training: no cross-entropy
    member.correct, member.seen = 1, 4
    syn = condenser._syn_embeddings(condenser._syn_augmented(draw.params))
    logits = condenser.net.classifier(syn.flatten(0, 1))
    ce = float(torch.nn.functional.cross_entropy(logits, condenser.syn_labels).detach())
    assert float(condenser.loss(draw).detach()) == pytest.approx(untrained + 25.0 * 3 * ce, rel=1e-4)


def _saved(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# ------------------------------------------------------------------ the configs
def test_the_recipe_configs_choose_their_pieces_and_idm_needs_no_pool():
    from orchestrator.config import ConfigError, load_config
    from orchestrator.run_opening import uses_pool
    from tests.conftest import REPO

    _, info = tiny_set()
    idm = load_config(REPO / "configs" / "cifar10-ipc10-idm.yaml")
    assert (idm.condense.networks, idm.condense.ce_network, idm.condense.effective_lr_img) == ("queue", "matching", 0.2)
    assert not uses_pool(idm)  # the queue trains its own networks
    ncfm = load_config(REPO / "configs" / "cifar10-ipc10-ncfm.yaml", ["condense.cfd_sampler=true"]).condense
    assert (ncfm.loss, ncfm.networks, ncfm.cfd_sampler) == ("cfd", "blend", True)
    with pytest.raises(ConfigError, match="cfd_sampler learns the frequencies"):
        load_config(REPO / "configs" / "cifar10-ipc10-m3d.yaml", ["condense.cfd_sampler=true"])
    with pytest.raises(ConfigError, match="no final state"):
        load_config(REPO / "configs" / "cifar10-ipc10-idm.yaml", ["condense.ce_network=trained"])
