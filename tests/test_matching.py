"""The pieces of a matching recipe: pool networks, pixel space, kernel MMD."""

from __future__ import annotations

import io

import pytest
import torch

from workers.data.types import ImageSet
from workers.dm import DMCondenser, DMSettings
from workers.matching import BlendNetworks, PoolNetworks, PoolStates, mmd
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
    states = [build_network("ConvNetW32", 1, 3, (8, 8)).state_dict() for _ in range(3)]
    source, target = PoolNetworks(_pool(states)), build_network("ConvNetW32", 1, 3, (8, 8))
    drawn = []
    for iteration in range(12):
        network = source.draw(target, torch.Generator(), seed=5, iteration=iteration)
        drawn.append(next(i for i, s in enumerate(states)
                          if all(torch.equal(v, target.state_dict()[k]) for k, v in s.items())))
        assert network == drawn[-1]  # the state's network, for the cross-entropy term
    assert len(set(drawn)) == 3  # every state gets drawn
    source.draw(target, torch.Generator(), seed=5, iteration=4)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in states[drawn[4]].items())  # the same again
    with pytest.raises(ValueError, match="holds no state"):
        PoolNetworks(PoolStates([], {}, {}))


def test_blended_networks_lie_between_a_networks_first_and_last_states():
    first, last = (build_network("ConvNetW32", 1, 3, (8, 8)).state_dict() for _ in range(2))
    source, target = BlendNetworks(PoolStates([], {0: first}, {0: last})), build_network("ConvNetW32", 1, 3, (8, 8))
    coefficients = set()
    for iteration in range(5):
        assert source.draw(target, torch.Generator(), seed=1, iteration=iteration) == 0
        key = "classifier.weight"
        apart = (last[key] - first[key]).abs() > 1e-2  # where the ratio is not float noise
        a = ((target.state_dict()[key] - first[key]) / (last[key] - first[key]))[apart]
        assert torch.allclose(a, a[0].expand_as(a), atol=1e-4) and 0 <= float(a[0]) <= 1  # one coefficient
        coefficients.add(round(float(a[0]), 4))
    assert len(coefficients) == 5


def _pool(states: list) -> PoolStates:
    return PoolStates(list(enumerate(states)), dict(enumerate(states)), dict(enumerate(states)))


RECIPES = {
    "pool": DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", networks="pool"),
    "pixels-rbf": DMSettings(ipc=2, iterations=6, batch_real=5, networks="pixels", loss="mmd", kernel="rbf",
                             dsa_strategy="none"),
    "m3d": DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", factor=2, loss="mmd", kernel="rbf"),
    "idm": DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", factor=2, networks="queue",
                      ce_weight=0.5, ce_network="matching"),
    "pool-ce": DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", factor=2, networks="pool",
                          ce_weight=0.5, ce_network="matching"),
    "dance": DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", factor=2, networks="blend",
                        ce_weight=0.5, ce_network="trained"),
    "ncfm": DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", factor=2, networks="blend", loss="cfd",
                       ce_weight=0.5, ce_network="trained"),
    "ncfm-minmax": DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", factor=2, networks="blend",
                              loss="cfd", cfd_sampler=True, ce_weight=0.5, ce_network="trained"),
}


@pytest.mark.parametrize("settings", RECIPES.values(), ids=RECIPES.keys())
def test_every_recipe_resumes_from_a_checkpoint_bit_identically(settings):
    real, info = tiny_set(per_class=20)
    pool = _pool([build_network("ConvNetW32", 1, 3, (8, 8)).state_dict() for _ in range(3)])
    whole = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool=pool)
    whole.run()
    first = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool=pool)
    first.run(until=3)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    resumed = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool=pool)
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


@pytest.mark.parametrize("settings", RECIPES.values(), ids=RECIPES.keys())
def test_a_classs_gradient_depends_on_its_own_images_only(settings):
    """What sharding needs of every piece: given the iteration's network and draws, the loss is a
    sum of per-class terms, so class 0's gradient is the same whatever the other classes' images."""
    real, info = tiny_set(per_class=20)
    pool = _pool([build_network("ConvNetW32", 1, 3, (8, 8)).state_dict() for _ in range(3)])
    condenser = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool=pool)
    draw = condenser.draw()
    first, = torch.autograd.grad(condenser.loss(draw), condenser.syn)
    with torch.no_grad():
        condenser.syn[settings.ipc :] = torch.randn_like(condenser.syn[settings.ipc :])  # classes 1 and 2
    condenser.draw()  # the network drawn again, as it was: the same iteration
    again, = torch.autograd.grad(condenser.loss(draw), condenser.syn)
    torch.testing.assert_close(again[: settings.ipc], first[: settings.ipc], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(again[settings.ipc :], first[settings.ipc :])


def _one_class(draw, c: int, take: int, offset: int):  # noqa: ANN001, ANN202
    """The part of a grouped draw that class ``c`` sees, re-indexed for a condenser of that class alone."""
    from workers.dm import Draw, RealBatch

    rows = slice(c * take, (c + 1) * take)
    batch = draw.batch
    targets = torch.where(batch.targets[rows] == c, 0, 1)
    one = RealBatch(batch.index[rows] - offset, torch.zeros_like(batch.groups[rows]), targets, batch.counts[c : c + 1])
    return Draw(one, draw.params.rows(slice(c, c + 1)), draw.network)


@pytest.mark.parametrize("settings", RECIPES.values(), ids=RECIPES.keys())
def test_grouped_loss_and_gradients_equal_the_per_class_computation(settings):
    real, info = tiny_set(per_class=20)
    real.labels[-3:] = 0  # classes of unequal sizes: padding rows in the grouped batch
    pool = _pool([build_network("ConvNetW32", 1, 3, (8, 8)).state_dict() for _ in range(3)])
    grouped = DMCondenser(real, info, [0, 1, 2], settings, seed=4, pool=pool)
    draw = grouped.draw()
    loss = grouped.loss(draw)
    grad, = torch.autograd.grad(loss, grouped.syn)
    take = draw.batch.index.shape[0] // 3
    total = 0.0
    for c in range(3):
        mine = real.labels == c
        alone = DMCondenser(ImageSet(real.images[mine], real.labels[mine]), info, [c], settings, seed=4, pool=pool)
        with torch.no_grad():
            alone.syn.copy_(grouped.syn[c * settings.ipc : (c + 1) * settings.ipc])
        alone.draw()  # the same seed and iteration: the same network
        part = alone.loss(_one_class(draw, c, take, sum(grouped.bank.host_counts[:c])))
        total += float(part.detach())
        one, = torch.autograd.grad(part, alone.syn)
        expected = grad[c * settings.ipc : (c + 1) * settings.ipc]
        # float error relative to the gradient's scale: convolutions of 1 and 3 classes may sum in
        # another order (AVX2 and AVX-512 kernels differ), and NCFM's cosines amplify that
        torch.testing.assert_close(one, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert total == pytest.approx(float(loss.detach()), rel=1e-4)


def test_factor_two_decodes_tiles_back_to_full_size_and_encode_inverts_the_layout():
    from workers.parameterize import decode, encode, resize_matrix

    images = torch.randn(8, 3, 8, 8)  # two stored images' worth
    stored = encode(images, 2)
    assert stored.shape == (2, 3, 8, 8)
    torch.testing.assert_close(stored[0, :, :4, 4:], torch.nn.functional.avg_pool2d(images[1], 2))  # tile (0, 1)
    decoded = decode(stored.requires_grad_(), 2)
    assert decoded.shape == (8, 3, 8, 8)
    torch.use_deterministic_algorithms(True)  # the matrix form, for CUDA's deterministic mode
    try:
        by_matrix = decode(stored, 2)
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(by_matrix, decoded, rtol=0, atol=1e-5)
    g1, = torch.autograd.grad(by_matrix.square().sum(), stored)
    g2, = torch.autograd.grad(decoded.square().sum(), stored)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-4)
    up = torch.nn.functional.interpolate(torch.arange(5.0).view(1, 1, 1, 5), size=(1, 13), mode="bilinear",
                                         align_corners=False)
    torch.testing.assert_close(resize_matrix(5, 13, up) @ torch.arange(5.0), up.flatten())
