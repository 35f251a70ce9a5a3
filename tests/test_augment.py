"""DSA: Siamese sharing, per-op references, gradients, determinism, shapes."""

from __future__ import annotations

import random

import math
from dataclasses import replace

import pytest
import torch

from workers.augment import (DEFAULT_STRATEGY, OPS, apply_dsa, augment_batch, draw_params,
                             parse_strategy)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _one_op(op: str, n_groups: int, seed: int = 0):
    return draw_params(op, n_groups, _gen(seed), "cpu")


def _per_image(op: str, x: torch.Tensor, seed: int = 0):
    """Each image its own group, params drawn for ``op`` alone."""
    params = _one_op(op, x.shape[0], seed)
    return apply_dsa(x, torch.arange(x.shape[0]), params), params


# ---------------------------------------------------------------- Siamese


@pytest.mark.parametrize("strategy", [DEFAULT_STRATEGY, *OPS])
def test_same_image_same_group_in_two_batches_is_identical(strategy: str) -> None:
    real = torch.randn(6, 3, 12, 12)
    syn = torch.randn(4, 3, 12, 12)
    syn[1] = real[0]  # both in group (class slot) 0
    real_groups = torch.tensor([0, 0, 0, 1, 1, 1])
    syn_groups = torch.tensor([0, 0, 1, 1])
    params = draw_params(strategy, 2, _gen(3), "cpu")
    out_real = apply_dsa(real, real_groups, params)
    out_syn = apply_dsa(syn, syn_groups, params)
    assert torch.equal(out_real[0], out_syn[1])


def test_two_groups_get_different_draws() -> None:
    params = _one_op("scale", 2)
    assert not torch.equal(params.scale[0], params.scale[1])
    img = torch.randn(1, 3, 12, 12)
    out = apply_dsa(img.expand(2, -1, -1, -1), torch.tensor([0, 1]), params)
    assert not torch.allclose(out[0], out[1])


def test_images_of_one_group_share_the_transformation() -> None:
    # flip is all-or-nothing per group: every image of a group is flipped or none is
    x = torch.randn(8, 1, 6, 6)
    groups = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    params = _one_op("flip", 4, seed=1)
    out = apply_dsa(x, groups, params)
    for i in range(8):
        flipped = bool(params.flip[groups[i]] < 0.5)
        assert torch.equal(out[i], x[i].flip(-1) if flipped else x[i])


def test_each_group_picks_one_op_of_the_strategy() -> None:
    params = draw_params(DEFAULT_STRATEGY, 200, _gen(), "cpu")
    assert set(params.op.tolist()) == set(range(len(OPS)))
    params = draw_params("crop_flip", 200, _gen(), "cpu")
    assert set(params.op.tolist()) == {OPS.index("crop"), OPS.index("flip")}
    shared = draw_params(DEFAULT_STRATEGY, 50, _gen(), "cpu", shared_op=True)
    assert len(set(shared.op.tolist())) == 1


def test_mixed_ops_equal_each_op_applied_alone() -> None:
    x = torch.randn(24, 3, 10, 10)
    groups = torch.arange(24) % 12
    params = draw_params(DEFAULT_STRATEGY, 12, _gen(7), "cpu")
    out = apply_dsa(x, groups, params)
    assert len(set(params.op.tolist())) > 2
    for i in range(24):
        alone = replace(params, ops=(OPS[int(params.op[groups[i]])],))
        expected = apply_dsa(x[i:i + 1], groups[i:i + 1], alone)
        torch.testing.assert_close(out[i:i + 1], expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- per-op references


def test_color_matches_the_formulas() -> None:
    x = torch.randn(5, 3, 6, 7, dtype=torch.float64)
    out, p = _per_image("color", x.float())
    for i in range(5):
        img = x[i] + (float(p.brightness[i]) - 0.5) * 1.0
        m = img.mean(dim=0, keepdim=True)
        img = (img - m) * (float(p.saturation[i]) * 2.0) + m
        img = (img - img.mean()) * (float(p.contrast[i]) + 0.5) + img.mean()
        torch.testing.assert_close(out[i].double(), img, rtol=1e-5, atol=1e-5)


def test_flip_flips_where_r_below_half() -> None:
    x = torch.randn(40, 1, 5, 6)
    out, p = _per_image("flip", x)
    flipped = p.flip < 0.5
    assert 0 < int(flipped.sum()) < 40
    for i in range(40):
        assert torch.equal(out[i], x[i].flip(-1) if flipped[i] else x[i])


def test_crop_shifts_by_the_drawn_translation() -> None:
    h, w = 16, 24
    x = torch.randn(60, 2, h, w)
    out, p = _per_image("crop", x)
    s = (int(h * 0.125 + 0.5), int(w * 0.125 + 0.5))
    ts = set()
    for i in range(60):
        ty = math.floor(float(p.crop[i, 0]) * (2 * s[0] + 1)) - s[0]
        tx = math.floor(float(p.crop[i, 1]) * (2 * s[1] + 1)) - s[1]
        ts.add((ty, tx))
        expected = torch.zeros_like(x[i])
        for r in range(h):
            for c in range(w):
                if 0 <= r + ty < h and 0 <= c + tx < w:
                    expected[:, r, c] = x[i, :, r + ty, c + tx]
        assert torch.equal(out[i], expected)
    assert {t[0] for t in ts} == set(range(-s[0], s[0] + 1))


def test_cutout_zeros_the_drawn_square() -> None:
    h, w = 9, 12
    x = torch.randn(40, 3, h, w) + 10  # no accidental zeros
    out, p = _per_image("cutout", x)
    size = (int(h * 0.5 + 0.5), int(w * 0.5 + 0.5))
    for i in range(40):
        r0 = math.floor(float(p.cutout[i, 0]) * (h + 1 - size[0] % 2)) - size[0] // 2
        c0 = math.floor(float(p.cutout[i, 1]) * (w + 1 - size[1] % 2)) - size[1] // 2
        expected = x[i].clone()
        expected[:, max(r0, 0):max(r0 + size[0], 0), max(c0, 0):max(c0 + size[1], 0)] = 0
        assert torch.equal(out[i], expected)
        assert (out[i] == 0).any()


def _ref_affine(img: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """Bilinear sampling, align_corners=True, zeros outside, one pixel at a time."""
    c, h, w = img.shape
    out = torch.zeros(c, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            xn, yn = 2 * j / (w - 1) - 1, 2 * i / (h - 1) - 1
            px = (theta[0][0] * xn + theta[0][1] * yn + theta[0][2] + 1) / 2 * (w - 1)
            py = (theta[1][0] * xn + theta[1][1] * yn + theta[1][2] + 1) / 2 * (h - 1)
            x0, y0 = math.floor(px), math.floor(py)
            for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, i, j] += wy * wx * img[:, yy, xx].double()
    return out


def test_scale_matches_a_reference_sampler() -> None:
    x = torch.randn(4, 2, 7, 9)
    out, p = _per_image("scale", x)
    assert ((p.scale >= 1 / 1.2) & (p.scale <= 1.2)).all()
    for i in range(4):
        sx, sy = float(p.scale[i, 0]), float(p.scale[i, 1])
        expected = _ref_affine(x[i], [[sx, 0, 0], [0, sy, 0]])
        torch.testing.assert_close(out[i].double(), expected, rtol=1e-4, atol=1e-5)


def test_rotate_matches_a_reference_sampler() -> None:
    x = torch.randn(4, 3, 8, 8)
    out, p = _per_image("rotate", x)
    assert (p.rotate.abs() <= math.radians(15)).all()
    for i in range(4):
        a = float(p.rotate[i])
        expected = _ref_affine(x[i], [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]])
        torch.testing.assert_close(out[i].double(), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("op", OPS)
def test_gradients_reach_x_through_every_op(op: str) -> None:
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    weight = torch.randn(6, 3, 8, 8)
    out, _ = _per_image(op, x)
    (out * weight).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cutout_gradient_is_the_kept_mask() -> None:
    x = (torch.randn(5, 2, 8, 8) + 10).requires_grad_()
    out, _ = _per_image("cutout", x)
    out.sum().backward()
    kept = (out != 0).to(x.dtype)
    assert torch.equal(x.grad, kept)


def test_gradients_flow_through_the_mixed_path() -> None:
    x = torch.randn(12, 3, 8, 8, requires_grad=True)
    params = draw_params(DEFAULT_STRATEGY, 12, _gen(2), "cpu")
    apply_dsa(x, torch.arange(12), params).pow(2).sum().backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


# ---------------------------------------------------------------- determinism, shapes, errors


def test_same_seed_same_output_other_seed_different() -> None:
    x = torch.randn(16, 3, 12, 12)
    a = augment_batch(x, DEFAULT_STRATEGY, _gen(11), random.Random(1))
    b = augment_batch(x, DEFAULT_STRATEGY, _gen(11), random.Random(1))
    c = augment_batch(x, DEFAULT_STRATEGY, _gen(12), random.Random(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("seed", range(4))
def test_augment_batch_applies_the_one_op_drawn_on_the_host(seed: int) -> None:
    x = torch.randn(32, 1, 8, 8)
    op = ["flip", "cutout"][random.Random(seed).randrange(2)]
    out = augment_batch(x, "flip_cutout", _gen(4), random.Random(seed))
    if op == "flip":
        assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(out, x))
    else:
        assert ((out == 0).flatten(1).sum(1) > 0).all()


def test_the_static_path_gives_every_image_its_own_ops_result_exactly() -> None:
    x = torch.randn(24, 3, 10, 10, requires_grad=True)
    groups = torch.arange(24) % 6
    params = draw_params(DEFAULT_STRATEGY, 6, _gen(9), "cpu")
    sorted_path, static_path = apply_dsa(x, groups, params), apply_dsa(x, groups, params, static=True)
    assert torch.equal(sorted_path, static_path)
    grad_sorted, = torch.autograd.grad(sorted_path.square().sum(), x)
    grad_static, = torch.autograd.grad(static_path.square().sum(), x)
    assert torch.equal(grad_sorted, grad_static)


def test_deterministic_mode_samples_by_gathers_like_grid_sample() -> None:
    from workers.augment import bilinear_sample

    x = torch.randn(5, 2, 9, 7, requires_grad=True)
    params = draw_params("scale_rotate", 5, _gen(3), "cpu")
    grid_sample = apply_dsa(x, torch.arange(5), params)
    torch.use_deterministic_algorithms(True)
    try:
        gathered = apply_dsa(x, torch.arange(5), params)
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(gathered, grid_sample, rtol=0, atol=1e-5)
    g1, = torch.autograd.grad(gathered.sum(), x)
    g2, = torch.autograd.grad(grid_sample.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-5)
    theta = torch.tensor([[[1.3, 0.2, 0.0], [-0.1, 0.8, 0.0]]]).repeat(5, 1, 1)  # points outside too
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=True)
    torch.testing.assert_close(bilinear_sample(x, grid),
                               torch.nn.functional.grid_sample(x, grid, align_corners=True), rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("strategy", [DEFAULT_STRATEGY, *OPS])
def test_shapes_preserved_for_channels_and_non_square(channels: int, strategy: str) -> None:
    x = torch.randn(10, channels, 6, 10)
    out = augment_batch(x, strategy, _gen(), random.Random(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    params = draw_params(strategy, 3, _gen(), "cpu")
    assert apply_dsa(x, torch.arange(10) % 3, params).shape == x.shape


@pytest.mark.parametrize("strategy", ["none", "None", ""])
def test_none_is_identity(strategy: str) -> None:
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(augment_batch(x, strategy, _gen(), random.Random(0)), x)
    assert parse_strategy(strategy) == ()


def test_unknown_ops_name_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid ops: color, crop, cutout, flip, scale, rotate"):
        draw_params("crop_jitter", 2, _gen(), "cpu")


def test_bad_groups_error_clearly() -> None:
    params = draw_params(DEFAULT_STRATEGY, 2, _gen(), "cpu")
    with pytest.raises(ValueError, match="groups must be"):
        apply_dsa(torch.randn(3, 1, 8, 8), torch.tensor([0, 1]), params)
    with pytest.raises(ValueError, match="n_groups"):
        draw_params(DEFAULT_STRATEGY, 0, _gen(), "cpu")
