"""RDED (Sun et al., CVPR 2024, "On the Diversity and Realism of Distilled Dataset"): a class's
stored images are real crops that a frozen teacher finds most typical of the class, stitched
``stitch`` x ``stitch`` into each image.

Per class, as RDED's synthesis does it (LINs-lab/RDED, synthesize/main.py and utils.py):

- draw: ``candidates`` real images of the class (RDED's mipc), ``crops`` random square crops
  of each (RandomResizedCrop to 1/stitch of the side, aspect ratio 1, area share in ``scale``,
  bilinear with antialiasing);
- score: each crop zero-padded to the image size in the normalised space (centred), then the
  teacher's cross-entropy on the true class;
- select: each image's lowest-scoring crop, then the class's ipc x stitch^2 lowest of those;
- stitch: tile k (row-major) of stored image t holds the crop ranked k x ipc + t, so every
  stored image mixes ranks; where the side does not divide, the first tiles are a pixel
  larger (a nearest resize of the crop, as RDED's mix_images).

RDED trains on the stitched image whole (its patch shuffling belongs to its evaluation), so
the stored image is one training image: ``condense.factor`` stays 1.

Unlike RDED's (unseeded) synthesis, every draw of a class comes from a generator seeded with
(shard seed, class id): a class's images depend neither on the other classes of its shard nor
on an interruption, so a shard checkpointed class by class and resumed gives the bytes of an
uninterrupted one on the CPU. The draws are made on the CPU whatever the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.data.types import DatasetInfo, ImageSet
from workers.seeding import derive_seed, generator

_TRIES = 10  # RandomResizedCrop's attempts at a crop that fits before its centred fallback


@dataclass(frozen=True)
class RdedSettings:
    ipc: int  # stored images per class
    stitch: int = 1  # crops per side of a stored image
    crops: int = 5  # random crops per real image
    candidates: int = 300  # real images drawn per class
    scale: tuple[float, float] = (0.08, 1.0)  # the crops' share of the image area
    batch: int = 256  # crops per teacher forward

    @property
    def per_class(self) -> int:
        """Crops a class keeps: ipc stored images of stitch^2 tiles."""
        return self.ipc * self.stitch**2


@dataclass(frozen=True)
class ClassResult:
    class_id: int
    images: torch.Tensor  # float32 [ipc, C, H, W], normalised, on the CPU
    losses: torch.Tensor  # float32 [ipc x stitch^2]: the teacher's cross-entropy of each kept crop, best first


# ------------------------------------------------------------------ the draws
def crop_boxes(gen: torch.Generator, n: int, height: int, width: int,
               scale: tuple[float, float]) -> torch.Tensor:
    """[n, 3] int64 (top, left, side) of square crops as RandomResizedCrop draws them with ratio
    (1, 1): an area share uniform in ``scale``, up to ten tries at a side that fits, else the
    largest centred square."""
    share = torch.empty(n, _TRIES, dtype=torch.float64).uniform_(*scale, generator=gen)
    sides = torch.round(torch.sqrt(share * height * width)).long()
    fits = (sides > 0) & (sides <= min(height, width))
    first = torch.where(fits.any(1), fits.long().argmax(1), torch.full((n,), -1))
    fallback = min(height, width)
    side = torch.where(first >= 0, sides.gather(1, first.clamp(min=0)[:, None])[:, 0], torch.full((n,), fallback))
    u = torch.rand(n, 2, dtype=torch.float64, generator=gen)
    top = torch.floor(u[:, 0] * (height - side + 1)).long()
    left = torch.floor(u[:, 1] * (width - side + 1)).long()
    centred = first < 0
    top[centred], left[centred] = (height - fallback) // 2, (width - fallback) // 2
    return torch.stack([top, left, side], 1)


def cut_crops(images: torch.Tensor, boxes: torch.Tensor, per_image: int, size: tuple[int, int],
              mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The crops of ``images`` (uint8 [N, C, H, W]; boxes [N x per_image, 3], box i cut from image
    i // per_image) resized to ``size`` (bilinear, antialiased), float32 normalised [N x per_image, C, *size]."""
    out = torch.empty(len(boxes), images.shape[1], *size, device=images.device)
    for i, (top, left, side) in enumerate(boxes.tolist()):
        owner = i // per_image
        patch = images[owner:owner + 1, :, top:top + side, left:left + side].float() / 255
        out[i] = F.interpolate(patch, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (out - m) / s


# ------------------------------------------------------------------ scoring and selection
def pad_centred(crops: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crops zero-padded to ``size``, centred (RDED's pad: zero is the data's mean colour)."""
    dh, dw = size[0] - crops.shape[2], size[1] - crops.shape[3]
    return F.pad(crops, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def crop_losses(teacher: nn.Module, crops: torch.Tensor, class_id: int, size: tuple[int, int],
                batch: int) -> torch.Tensor:
    """The teacher's cross-entropy of every crop on ``class_id`` (float32 [M], the crops' device)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(crops), batch):
            logits = teacher(pad_centred(crops[start:start + batch], size)).float()
            target = torch.full((len(logits),), class_id, dtype=torch.long, device=logits.device)
            out.append(F.cross_entropy(logits, target, reduction="none"))
    return torch.cat(out)


def select(losses: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``losses`` [images, crops]: (crop index [keep], image index [keep]) of the ``keep`` images
    whose best crop scores lowest, best first (ties: the lower index)."""
    best, which = losses.min(1)  # the first minimum on a tie
    order = torch.sort(best, stable=True).indices[:keep]
    return which[order], order


# ------------------------------------------------------------------ stitching
def tile_sides(side: int, stitch: int) -> list[int]:
    """The sides of the ``stitch`` tiles along an image side: a pixel more for the first
    ``side % stitch`` (RDED's mix_images)."""
    return [side // stitch + (1 if i < side % stitch else 0) for i in range(stitch)]


def stitch_crops(crops: torch.Tensor, stitch: int, ipc: int, size: tuple[int, int]) -> torch.Tensor:
    """``crops`` [ipc x stitch^2, C, h, w], best first -> [ipc, C, *size]: tile k (row-major) of
    image t holds crop k x ipc + t, resized (nearest) to the tile where the tile is larger."""
    if len(crops) != ipc * stitch**2:
        raise ValueError(f"stitching {ipc} images of {stitch}x{stitch} tiles needs {ipc * stitch**2} crops, "
                         f"got {len(crops)}")
    out = torch.empty(ipc, crops.shape[1], *size, dtype=crops.dtype, device=crops.device)
    rows, cols = tile_sides(size[0], stitch), tile_sides(size[1], stitch)
    k, top = 0, 0
    for h in rows:
        left = 0
        for w in cols:
            part = crops[k * ipc:(k + 1) * ipc]
            if part.shape[2:] != (h, w):
                part = F.interpolate(part, size=(h, w), mode="nearest")
            out[:, :, top:top + h, left:left + w] = part
            left, k = left + w, k + 1
        top += h
    return out


# ------------------------------------------------------------------ a class, a shard
def class_seed(shard_seed: int, class_id: int) -> int:
    return derive_seed(shard_seed, "rded", class_id)


def condense_class(real: torch.Tensor, class_id: int, teacher: nn.Module, info: DatasetInfo,
                   settings: RdedSettings, seed: int, device: torch.device | str = "cpu") -> ClassResult:
    """One class's stored images from its real images (uint8 [N, C, H, W]) and the teacher (in
    eval mode, on ``device``); every draw from ``seed``."""
    s = settings
    if s.candidates < s.per_class:
        raise ValueError(f"RDED keeps one crop per drawn image: {s.candidates} candidates cannot give ipc x stitch^2 = "
                         f"{s.per_class} crops; raise condense.rded.candidates")
    if len(real) < s.per_class:
        raise ValueError(f"class {class_id} has {len(real)} training images, but RDED keeps one crop per image and "
                         f"needs ipc x stitch^2 = {s.per_class}: lower condense.ipc or condense.rded.stitch")
    gen = generator(seed)
    chosen = torch.randperm(len(real), generator=gen)[:s.candidates]
    n, (height, width) = len(chosen), info.im_size
    crop_size = (height // s.stitch, width // s.stitch)
    boxes = crop_boxes(gen, n * s.crops, height, width, s.scale)  # crop j of image i at row i x crops + j
    crops = cut_crops(real[chosen].to(device), boxes, s.crops, crop_size, info.mean, info.std)
    losses = crop_losses(teacher, crops, class_id, (height, width), s.batch).view(n, s.crops).cpu()
    crop_index, image_index = select(losses, s.per_class)
    kept = crops.view(n, s.crops, *crops.shape[1:])[image_index.to(device), crop_index.to(device)]
    stored = stitch_crops(kept, s.stitch, s.ipc, (height, width))
    return ClassResult(class_id, stored.cpu(), losses[image_index, crop_index])


def condense_classes(real: ImageSet, info: DatasetInfo, class_ids: Sequence[int], teacher: nn.Module,
                     settings: RdedSettings, shard_seed: int, device: torch.device | str = "cpu",
                     done: Sequence[ClassResult] = (),
                     on_class: Callable[[list[ClassResult]], None] | None = None) -> list[ClassResult]:
    """Every class of a shard, in order, starting after the classes ``done`` (a checkpoint's);
    ``on_class`` gets the results so far after each class (to checkpoint them)."""
    results = list(done)
    finished = {r.class_id for r in results}
    for class_id in class_ids:
        if class_id in finished:
            continue
        mine = real.images[real.labels == class_id]
        results.append(condense_class(mine, class_id, teacher, info, settings, class_seed(shard_seed, class_id),
                                      device))
        if on_class is not None:
            on_class(results)
    order = {c: i for i, c in enumerate(class_ids)}
    return sorted(results, key=lambda r: order[r.class_id])


def stored_set(results: Sequence[ClassResult]) -> tuple[torch.Tensor, torch.Tensor]:
    """The shard's stored images [classes x ipc, C, H, W] and their class ids, class by class."""
    images = torch.cat([r.images for r in results])
    labels = torch.cat([torch.full((len(r.images),), r.class_id, dtype=torch.int64) for r in results])
    return images, labels


def class_bytes(settings: RdedSettings, channels: int, im_size: tuple[int, int]) -> int:
    """What one class holds at once besides the teacher: its drawn images (uint8) and all their
    crops (float32), on the compute device."""
    h, w = im_size
    crop = channels * (h // settings.stitch) * (w // settings.stitch)
    return settings.candidates * (channels * h * w + settings.crops * 4 * crop)
