"""Differentiable Siamese Augmentation (DSA), vectorised over groups of images.

Semantics of the DSA code in its single-op mode: each draw picks ONE op of the
'_'-separated strategy ("color" = brightness, saturation, contrast in turn) and
its random parameters. A *group* (in DM: one class slot) shares one draw, so
the real and the synthetic images of a class see the same transformation
(Siamese). All randomness is drawn by :func:`draw_params`; :func:`apply_dsa` is
deterministic, so applying one ``DSAParams`` to two tensors is exactly Siamese.
Every op is differentiable w.r.t. the images (crop and cutout are gathers and
masks, so gradients reach the pixels they keep).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F

OPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

# ParamDiffAug of the DSA code.
PROB_FLIP = 0.5
RATIO_SCALE = 1.2
RATIO_ROTATE = 15.0  # degrees
RATIO_CROP_PAD = 0.125
RATIO_CUTOUT = 0.5
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5


@dataclass(frozen=True)
class DSAParams:
    """One draw per group (leading dim G), all tensors on one device.

    Integer parameters that depend on the image size (crop translation, cutout
    position) are kept as uniforms in [0, 1) and turned into integers when the
    image size is known, in :func:`apply_dsa`.
    """

    ops: tuple[str, ...]  # the strategy's ops; empty = identity
    op: torch.Tensor  # int64 [G]: index into OPS of the op each group applies
    brightness: torch.Tensor  # [G] r in [0, 1): x + (r - 0.5) * BRIGHTNESS
    saturation: torch.Tensor  # [G] r: (x - mean_c) * (r * SATURATION) + mean_c
    contrast: torch.Tensor  # [G] r: (x - mean) * (r + CONTRAST) + mean
    crop: torch.Tensor  # [G, 2] uniforms -> translation (rows, cols) in [-s, s]
    cutout: torch.Tensor  # [G, 2] uniforms -> square position (rows, cols)
    flip: torch.Tensor  # [G] r: horizontal flip where r < PROB_FLIP
    scale: torch.Tensor  # [G, 2] (sx, sy) in [1/RATIO_SCALE, RATIO_SCALE)
    rotate: torch.Tensor  # [G] angle in radians, |angle| <= RATIO_ROTATE degrees

    @property
    def n_groups(self) -> int:
        return self.op.shape[0]

    def rows(self, index: torch.Tensor | slice) -> DSAParams:
        """The draws at ``index`` (e.g. each image's group) as a new DSAParams."""
        tensors = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "ops"}
        return replace(self, **tensors)


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """The ops of a strategy such as ``"color_crop_flip"``; ``"none"`` or ``""`` -> ()."""
    text = (strategy or "").strip()
    if text.lower() in ("", "none"):
        return ()
    ops = tuple(text.split("_"))
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise ValueError(
            f"unknown DSA op(s) {bad} in strategy {strategy!r}; valid ops: {', '.join(OPS)} "
            "joined by '_' (or 'none')"
        )
    return ops


def draw_params(strategy: str, n_groups: int, generator: torch.Generator,
                device: torch.device | str, *, shared_op: bool = False) -> DSAParams:
    """One random draw per group from ``generator`` (which must live on ``device``).

    ``shared_op``: every group applies the same op (one op per call, as the DSA
    code does at training time), each with its own parameters.
    """
    device = torch.device(device)
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the draws go to {device}; "
                         "create the generator on that device")
    ops = parse_strategy(strategy)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    op = torch.zeros(n_groups, dtype=torch.int64, device=device)
    if ops:
        pick = torch.randint(len(ops), (1 if shared_op else n_groups,), generator=generator, device=device)
        if len(ops) == 1:  # no table to look up (the draw stays, so the stream does too)
            op = torch.full((n_groups,), OPS.index(ops[0]), dtype=torch.int64, device=device)
        else:
            op = _op_table(ops, device)[pick].expand(n_groups).contiguous()
    lo = 1.0 / RATIO_SCALE
    return DSAParams(
        ops=ops, op=op,
        brightness=rand(n_groups), saturation=rand(n_groups), contrast=rand(n_groups),
        crop=rand(n_groups, 2), cutout=rand(n_groups, 2), flip=rand(n_groups),
        scale=rand(n_groups, 2) * (RATIO_SCALE - lo) + lo,
        rotate=(rand(n_groups) - 0.5) * (2 * RATIO_ROTATE / 180 * math.pi),
    )


@functools.lru_cache(maxsize=64)
def _op_table(ops: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """The OPS index of each op of a strategy, made once per device (no copy per draw)."""
    return torch.tensor([OPS.index(o) for o in ops], device=device)


# ---------------------------------------------------------------- ops (per-image params)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _color(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    x = x + (_per_image(p.brightness, x) - 0.5) * BRIGHTNESS
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (_per_image(p.saturation, x) * SATURATION) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_per_image(p.contrast, x) + CONTRAST) + m


def _uniform_int(u: torch.Tensor, high: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Uniforms [n, 2] -> integers in [0, high) per column (clamped against rounding up),
    minus ``shift``; Python scalars only, so nothing is copied to the device."""
    cols = [torch.clamp(torch.floor(u[:, i] * h).long(), max=h - 1) - d for i, (h, d) in enumerate(zip(high, shift))]
    return torch.stack(cols, dim=1)


def crop_translation(p: DSAParams, size: tuple[int, int]) -> torch.Tensor:
    """int64 [n, 2] translations (rows, cols) in [-s, s], s = int(side * RATIO_CROP_PAD + 0.5)."""
    s = [int(d * RATIO_CROP_PAD + 0.5) for d in size]
    return _uniform_int(p.crop, (2 * s[0] + 1, 2 * s[1] + 1), (s[0], s[1]))


def cutout_start(p: DSAParams, size: tuple[int, int]) -> torch.Tensor:
    """int64 [n, 2] first row/col of the cutout square (may be negative: it is clipped)."""
    cut = [int(d * RATIO_CUTOUT + 0.5) for d in size]
    return _uniform_int(p.cutout, (size[0] + 1 - cut[0] % 2, size[1] + 1 - cut[1] % 2), (cut[0] // 2, cut[1] // 2))


def _crop(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    # Output pixel (i, j) = x[i + ty, j + tx]; pixels from outside are zero (1-pixel
    # zero pad, indices clamped onto it, as in the DSA code).
    n, c, h, w = x.shape
    t = crop_translation(p, (h, w))
    rows = (torch.arange(h, device=x.device) + t[:, :1] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device) + t[:, 1:] + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    padded = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2))
    return padded.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def _cutout(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    n, _, h, w = x.shape
    start = cutout_start(p, (h, w))
    cut = (int(h * RATIO_CUTOUT + 0.5), int(w * RATIO_CUTOUT + 0.5))
    r = torch.arange(h, device=x.device) - start[:, :1]
    col = torch.arange(w, device=x.device) - start[:, 1:]
    inside = ((r >= 0) & (r < cut[0])).view(n, h, 1) & ((col >= 0) & (col < cut[1])).view(n, 1, w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    return torch.where(p.flip.view(-1, 1, 1, 1) < PROB_FLIP, x.flip(3), x)


def _affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Sample x through theta = [[a, b, 0], [c, d, 0]] per image (bilinear, zero outside)."""
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([a, b, zero], -1), torch.stack([c, d, zero], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    if torch.are_deterministic_algorithms_enabled():  # grid_sample's CUDA backward uses atomics
        return bilinear_sample(x, grid)
    return F.grid_sample(x, grid, align_corners=True)


def bilinear_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(x, grid, align_corners=True)`` (bilinear, zeros outside) from gathers,
    whose backward is deterministic on CUDA under ``torch.use_deterministic_algorithms``."""
    n, c, h, w = x.shape
    gx = (grid[..., 0] + 1) * ((w - 1) / 2)  # [n, H, W] source columns
    gy = (grid[..., 1] + 1) * ((h - 1) / 2)
    x0, y0 = torch.floor(gx), torch.floor(gy)
    flat = x.reshape(n, c, h * w)
    out = x.new_zeros(n, c, *grid.shape[1:3])
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xs, ys = x0 + dx, y0 + dy
        weight = (1 - (gx - xs).abs()) * (1 - (gy - ys).abs())
        inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
        index = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).long().view(n, 1, -1).expand(n, c, -1)
        corner = flat.gather(2, index).view_as(out)
        out = out + corner * (weight * inside).unsqueeze(1).to(x.dtype)
    return out


def _scale(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    sx, sy = p.scale[:, 0], p.scale[:, 1]
    zero = torch.zeros_like(sx)
    return _affine(x, sx, zero, zero, sy)


def _rotate(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    cos, sin = torch.cos(p.rotate), torch.sin(p.rotate)
    return _affine(x, cos, -sin, sin, cos)


_APPLY: dict[str, Callable[[torch.Tensor, DSAParams], torch.Tensor]] = {
    "color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate,
}


# ---------------------------------------------------------------- entry points


def _check(x: torch.Tensor, groups: torch.Tensor, params: DSAParams) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float [N, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    if groups.dim() != 1 or groups.shape[0] != x.shape[0] or groups.is_floating_point():
        raise ValueError(f"groups must be an integer tensor [N={x.shape[0]}], got {groups.dtype} "
                         f"{tuple(groups.shape)}")
    if groups.device != x.device or params.op.device != x.device:
        raise ValueError(f"x ({x.device}), groups ({groups.device}) and params ({params.op.device}) "
                         "must be on one device")


def apply_dsa(x: torch.Tensor, groups: torch.Tensor, params: DSAParams, *, static: bool = False) -> torch.Tensor:
    """Augment each image with the draw of its group (``groups``: int64 [N] into [0, G)).

    ``static``: no host synchronisation (every op of the strategy runs on every image and
    each image keeps its own op's result: more arithmetic, fixed shapes), for CUDA.
    Otherwise images are sorted by op and each op runs once on its run of images, which
    needs the run lengths on the host (one synchronisation)."""
    _check(x, groups, params)
    if not params.ops:
        return x
    p = params.rows(groups)
    if len(set(params.ops)) == 1:
        return _APPLY[params.ops[0]](x, p)
    if static:
        out = x
        for name in dict.fromkeys(params.ops):
            chosen = (p.op == OPS.index(name)).view(-1, 1, 1, 1)
            out = torch.where(chosen, _APPLY[name](x, p), out)
        return out
    counts = torch.bincount(p.op, minlength=len(OPS)).tolist()
    order = torch.argsort(p.op, stable=True)
    xs, ps = x[order], p.rows(order)
    outs, start = [], 0
    for name, count in zip(OPS, counts):
        if count:
            outs.append(_APPLY[name](xs[start:start + count], ps.rows(slice(start, start + count))))
            start += count
    return x.new_empty(x.shape).index_copy(0, order, torch.cat(outs))


def augment_batch(x: torch.Tensor, strategy: str, generator: torch.Generator, op_rng: random.Random) -> torch.Tensor:
    """Training-time DSA: one op per call, independent parameters per image. The op is
    drawn on the host (``op_rng``), so choosing it never waits for the device; the
    parameters come from ``generator`` on the images' device."""
    ops = parse_strategy(strategy)
    if not ops:
        return x
    op = ops[op_rng.randrange(len(ops))]
    params = draw_params(op, x.shape[0], generator, x.device)
    return _APPLY[op](x, params)
