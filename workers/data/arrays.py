"""Sources held in memory as uint8 arrays (digits, MNIST, CIFAR, SVHN)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .base import Loaded, check_labels, counts_of
from .fingerprint import arrays_fingerprints
from .types import DatasetError


def resize_images(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, C, H, W] square images -> [N, C, R, R] with PIL's antialiased bilinear filter."""
    n, channels, height, width = images.shape
    if height != width:
        raise DatasetError(f"cannot resize non-square {height}x{width} images; use the native resolution")
    if height == resolution:
        return images
    mode = {1: "L", 3: "RGB"}[channels]
    out = np.empty((n, channels, resolution, resolution), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0), mode)
        resized = np.asarray(pil.resize((resolution, resolution), Image.Resampling.BILINEAR))
        out[i] = resized[None] if channels == 1 else resized.transpose(2, 0, 1)
    return out


class ArraySource:
    """Train and test splits as uint8 [N, C, H, W] arrays with int64 labels."""

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        resolution: int | None = None,
    ) -> None:
        self.name = name
        self.class_names = list(class_names)
        k = len(self.class_names)
        self._train = self._split(train, k, resolution, "train")
        self._test = self._split(test, k, resolution, "test")
        self.channels = int(self._train[0].shape[1])
        self.resolution = int(self._train[0].shape[2])

    def _split(
        self, split: tuple[np.ndarray, np.ndarray], k: int, resolution: int | None, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        images, labels = split
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise DatasetError(f"{self.name} {what}: expected uint8 [N, C, H, W] images with one label each")
        labels = check_labels(labels, k, f"{self.name} {what}")
        return (images if resolution is None else resize_images(images, resolution)), labels

    def train_counts(self) -> list[int]:
        return counts_of(self._train[1], len(self.class_names))

    def test_counts(self) -> list[int]:
        return counts_of(self._test[1], len(self.class_names))

    def test_size(self) -> int:
        return len(self._test[1])

    def class_fingerprints(self) -> list[str]:
        return arrays_fingerprints(self.class_names, *self._train)

    def load_train(self, class_ids: Sequence[int], *, strict: bool = False) -> Loaded:
        images, labels = self._train
        order = np.argsort(labels, kind="stable")
        keep = order[np.isin(labels[order], np.asarray(list(class_ids), dtype=np.int64))]
        return Loaded(images[keep], labels[keep])

    def load_test(self, start: int = 0, stop: int | None = None, *, strict: bool = False) -> Loaded:
        images, labels = self._test
        return Loaded(images[start:stop], labels[start:stop])
