"""The pieces of a matching recipe: pool networks, pixel space, kernel MMD."""

from __future__ import annotations

import io

import pytest
import torch

from workers.dm import DMCondenser, DMSettings
from workers.matching import PoolNetworks, mmd
from workers.networks import build_network

from .test_dm import tiny_set


def test_mmd_with_the_linear_kernel_is_dms_mean_loss_and_ignores_padding():
    real, syn = torch.randn(3, 5, 4), torch.randn(3, 2, 4)
    weights = torch.ones(3, 5)
    weights[1, 3:] = 0  # two padding rows of a small class
    means = torch.stack([real[0].mean(0), real[1, :3].mean(0), real[2].mean(0)])
    torch.testing.assert_close(mmd(real, weights, syn, "linear"), ((means - syn.mean(1)) ** 2).sum())


def test_gaussian_mmd_is_zero_for_the_same_points_and_sums_classes_independently():
    real = torch.randn(2, 6, 3)
    weights = torch.ones(2, 6)
    assert mmd(real, weights, real.clone(), "rbf").abs() < 1e-5
    syn = torch.randn(2, 4, 3, requires_grad=True)
    grouped, = torch.autograd.grad(mmd(real, weights, syn, "rbf"), syn)
    one = [torch.autograd.grad(mmd(real[c : c + 1], weights[c : c + 1], syn[c : c + 1], "rbf"), syn)[0][c]
           for c in range(2)]
    torch.testing.assert_close(grouped, torch.stack(one))  # a class's gradient depends on its class only
    with pytest.raises(ValueError, match="unknown kernel"):
        mmd(real, weights, syn, "laplace")


def test_pool_networks_draw_one_state_per_iteration_from_seed_and_iteration():
    nets = [build_network("ConvNetW32", 1, 3, (8, 8)) for _ in range(3)]
    states = [n.state_dict() for n in nets]
    source, target = PoolNetworks(states, torch.device("cpu")), build_network("ConvNetW32", 1, 3, (8, 8))
    drawn = []
    for iteration in range(12):
        source.draw(target, torch.Generator(), seed=5, iteration=iteration)
        drawn.append(next(i for i, s in enumerate(states)
                          if all(torch.equal(v, target.state_dict()[k]) for k, v in s.items())))
    assert len(set(drawn)) == 3  # every state gets drawn
    source.draw(target, torch.Generator(), seed=5, iteration=4)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in states[drawn[4]].items())  # the same again
    with pytest.raises(ValueError, match="holds no state"):
        PoolNetworks([], torch.device("cpu"))


@pytest.mark.parametrize("settings", [
    DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", networks="pool"),
    DMSettings(ipc=2, iterations=6, batch_real=5, networks="pixels", loss="mmd", kernel="rbf", dsa_strategy="none"),
], ids=["pool", "pixels-rbf"])
def test_every_recipe_resumes_from_a_checkpoint_bit_identically(settings):
    real, info = tiny_set()
    states = [build_network("ConvNetW32", 1, 3, (8, 8)).state_dict() for _ in range(3)]
    whole = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool_states=states)
    whole.run()
    first = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool_states=states)
    first.run(until=3)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    resumed = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool_states=states)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    resumed.run()
    assert torch.equal(resumed.syn, whole.syn) and not torch.equal(whole.syn, first.syn)


def test_pixel_space_matching_learns_the_class_means():
    real, info = tiny_set(classes=2, per_class=12)
    settings = DMSettings(ipc=1, iterations=60, batch_real=12, networks="pixels", loss="mmd", kernel="linear",
                          dsa_strategy="none", lr_img=0.5, init="noise")
    condenser = DMCondenser(real, info, [0, 1], settings, seed=0)
    condenser.run()
    images, labels = condenser.synthetic()
    for c in (0, 1):  # one image per class: the linear MMD's optimum is the class mean
        target = ((real.images[real.labels == c].float() / 255 - 0.5) / 0.25).mean(0)
        torch.testing.assert_close(images[labels == c][0], target, rtol=0, atol=1e-3)
