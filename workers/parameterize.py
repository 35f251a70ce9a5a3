"""How stored synthetic images map to training images ("partition and expansion", IDC/IDM).

With factor f, each stored image [C, H, W] holds f x f tiles of (H/f) x (W/f); decoding cuts
the tiles out and resizes each back to H x W (bilinear), so a stored image becomes f^2
training images of its class, consecutive (a class's images stay contiguous). Factor 1 is the
identity. Decoding is differentiable: the loss reaches the stored pixels through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decode(stored: torch.Tensor, factor: int) -> torch.Tensor:
    """[N, C, H, W] stored images -> [N * factor^2, C, H, W] training images."""
    if factor == 1:
        return stored
    n, c, h, w = stored.shape
    if h % factor or w % factor:
        raise ValueError(f"condense.factor={factor} needs image sides divisible by it, got {h}x{w}")
    th, tw = h // factor, w // factor
    tiles = stored.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5)  # [n, f, f, c, th, tw]
    tiles = tiles.reshape(n * factor * factor, c, th, tw)
    if torch.are_deterministic_algorithms_enabled():  # interpolate's CUDA backward uses atomics
        rows, cols = (resize_matrix(a, b, tiles) for a, b in ((th, h), (tw, w)))
        return rows @ tiles @ cols.T
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def resize_matrix(size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
    """[size_out, size_in]: bilinear resizing along one axis as ``F.interpolate`` does it with
    ``align_corners=False``, as a matrix (whose backward is a matrix product: deterministic)."""
    src = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = src - low
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix[torch.arange(size_out), low] += 1 - frac
    matrix[torch.arange(size_out), high] += frac
    return matrix.to(like.dtype).to(like.device)


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """[N * factor^2, C, H, W] images -> [N, C, H, W] stored images, each holding ``factor^2``
    consecutive images shrunk into its tiles (area average): the initialisation from real images."""
    if factor == 1:
        return images
    m, c, h, w = images.shape
    if h % factor or w % factor or m % (factor * factor):
        raise ValueError(f"condense.factor={factor} needs image sides and counts divisible by it, got {m} of {h}x{w}")
    small = F.adaptive_avg_pool2d(images, (h // factor, w // factor))
    n = m // (factor * factor)
    tiles = small.reshape(n, factor, factor, c, h // factor, w // factor).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(n, c, h, w)
