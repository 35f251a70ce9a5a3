"""Each protocol's augmentation of a training batch (workers.training.protocols): DSA (the paper),
RDED's per-image patch shuffling, random resized crop and flip followed by CutMix, or CutMix
alone (DD-Ranking). Images are in the normalised space; every operation here is linear per
channel or moves pixels, so it commutes with the normalisation that RDED applies last.

Every draw comes from the model's streams (``ModelStreams``): RDED's and CutMix's from the host
stream ``ops``, so that no batch waits for the device.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from workers.augment import augment_batch
from workers.training.settings import ModelStreams, TrainSettings

CUTMIX_BETA = 1.0  # RDED's --cutmix default and DD-Ranking's aug_params.beta
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect ratios


def maybe_augment(x: torch.Tensor, settings: TrainSettings, streams: ModelStreams) -> torch.Tensor:
    if not settings.augments:
        return x
    kind = settings.rule.augmentation
    if kind == "dsa":
        return augment_batch(x, settings.dsa_strategy, streams.augment, streams.ops)
    if kind == "rded":
        x = torch.stack([rded_view(img, settings.patch_factor, streams.ops) for img in x])
    return cutmix(x, streams.ops)


def rded_view(img: torch.Tensor, factor: int, rng: random.Random) -> torch.Tensor:
    """RDED's training transform of one image [C, H, W]: ShufflePatches(factor),
    RandomResizedCrop(scale=(1/factor, 1)) back to its size, RandomHorizontalFlip."""
    img = shuffle_patches(img, factor, rng)
    img = random_resized_crop(img, (1 / factor, 1.0), rng)
    return img.flip(-1) if rng.random() < 0.5 else img


def shuffle_patches(img: torch.Tensor, factor: int, rng: random.Random) -> torch.Tensor:
    """RDED's ShufflePatches: the image cut into ``factor`` strips of columns, shuffled, then into
    ``factor`` strips of rows, shuffled; factor 1 leaves it as it is."""
    if factor == 1:
        return img
    for dim in (-1, -2):
        strips = list(img.split(img.shape[dim] // factor, dim=dim))[:factor]
        rng.shuffle(strips)
        img = torch.cat(strips, dim=dim)
    return img


def crop_box(height: int, width: int, scale: tuple[float, float], rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws it: an area share in
    ``scale`` and a log-uniform aspect ratio, ten tries, then the centred crop of the whole image."""
    area = height * width
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        h, w = height, round(height * CROP_RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: torch.Tensor, scale: tuple[float, float], rng: random.Random) -> torch.Tensor:
    """A crop of ``img`` [C, H, W] (``crop_box``) resized back to H x W, bilinear with antialiasing."""
    height, width = img.shape[-2:]
    top, left, h, w = crop_box(height, width, scale, rng)
    if (h, w) == (height, width):
        return img
    crop = img[None, :, top : top + h, left : left + w]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]


def cutmix(x: torch.Tensor, rng: random.Random, beta: float = CUTMIX_BETA) -> torch.Tensor:
    """CutMix as RDED's ``cutmix`` and DD-Ranking's ``Cutmix`` do it: one box for the whole batch,
    its side ``sqrt(1 - lam)`` of the image's (lam ~ Beta(beta, beta)) around a uniform centre,
    clipped, filled from a random permutation of the batch. The teacher labels the mixed images."""
    n, _, height, width = x.shape
    lam = rng.betavariate(beta, beta)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.randrange(height), rng.randrange(width)
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    perm = list(range(n))
    rng.shuffle(perm)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[torch.tensor(perm, device=x.device), :, top:bottom, left:right]
    return mixed
