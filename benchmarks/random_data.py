"""Random uint8 images of any shape with their dataset info: the benchmarks' data, no download."""

from __future__ import annotations

import torch

from workers.data.types import DatasetInfo, ImageSet


def random_dataset(shape: tuple[int, int, int], classes: int, per_class: int, seed: int) -> tuple[ImageSet, DatasetInfo]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, *shape), generator=gen, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(per_class)
    c = shape[0]
    info = DatasetInfo("random", [str(i) for i in range(classes)], c, shape[1:], (0.5,) * c, (0.25,) * c,
                       (per_class,) * classes, (0,) * classes)
    return ImageSet(images, labels), info
