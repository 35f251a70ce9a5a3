"""Sources (where raw pixels come from) and the reader that serves any source.

A ``Source`` opens cheaply (it only checks its root and names its classes) and
loads class by class, so preparation can run one class range per task without
touching other classes. ``check_source`` lists everything once to catch bad
input before any decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .types import ChannelStats, DatasetError, DatasetInfo, ImageSet, Skipped, check_class_ids


@dataclass
class Loaded:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    skipped: list[Skipped] = field(default_factory=list)

    def to_image_set(self) -> ImageSet:
        return ImageSet(torch.from_numpy(np.ascontiguousarray(self.images)), torch.from_numpy(self.labels))


class Source(Protocol):
    name: str
    class_names: list[str]
    channels: int
    resolution: int  # images are resolution x resolution

    def train_counts(self) -> list[int]:
        """Train images per class (file sources: files listed, before decoding)."""
        ...

    def test_counts(self) -> list[int]: ...

    def test_size(self) -> int: ...

    def class_fingerprints(self) -> list[str]:
        """Per class id, what identifies its train images (``fingerprint``), cheap to compute."""
        ...

    def load_train(self, class_ids: Sequence[int], *, strict: bool = False) -> Loaded:
        """The given classes' train images, ordered by class id; reads no other class."""
        ...

    def load_test(self, start: int = 0, stop: int | None = None, *, strict: bool = False) -> Loaded:
        """Test items [start, stop) in the source's fixed order."""
        ...


def check_source(source: Source) -> None:
    """Every class has train and test images; raise naming the classes otherwise."""
    names = source.class_names
    if not names:
        raise DatasetError(f"{source.name}: no classes found; check dataset.root")
    empty = [names[c] for c, n in enumerate(source.train_counts()) if n == 0]
    if empty:
        raise DatasetError(f"{source.name}: classes without train images: {empty[:20]}; add images or remove them")
    untested = [names[c] for c, n in enumerate(source.test_counts()) if n == 0]
    if untested:
        raise DatasetError(
            f"{source.name}: the test split does not match the train split: no test images for "
            f"classes {untested[:20]}; give every train class test images"
        )


def counts_of(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).tolist()


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DatasetError(
            f"{what}: labels {sorted(set(bad.tolist()))[:10]} out of range 0..{num_classes - 1}; "
            "the labels must index the class list"
        )
    return labels


class SourceReader:
    """A ``DatasetReader`` over a source, decoding on demand.

    ``info`` needs the train split's mean/std, so without a known ``info`` its first
    access decodes every train class once (and counts the images that decoded). A run
    does that once, in the driver, and hands the result to every task: with ``info``
    given, the reader neither checks the whole source again nor computes statistics.
    For large file sources (ImageNet) prepare the dataset instead and open it as
    ``prepared``.
    """

    _STATS_CLASSES = 16  # classes per step when computing mean/std: bounds memory

    def __init__(self, source: Source, *, strict: bool = False, info: DatasetInfo | None = None) -> None:
        if info is None:
            check_source(source)
        self.source = source
        self.strict = strict
        self.skipped: list[Skipped] = []
        self._info = info

    @property
    def info(self) -> DatasetInfo:
        if self._info is None:
            stats, counts = self._train_stats()
            mean, std = stats.mean_std()
            src = self.source
            self._info = DatasetInfo(
                src.name, list(src.class_names), src.channels, (src.resolution, src.resolution), mean, std,
                tuple(counts), tuple(src.test_counts()),
            )
        return self._info

    def _train_stats(self) -> tuple[ChannelStats, list[int]]:
        stats = ChannelStats(self.source.channels)
        n = len(self.source.class_names)
        counts = [0] * n
        for lo in range(0, n, self._STATS_CLASSES):
            loaded = self._load(range(lo, min(lo + self._STATS_CLASSES, n)))
            stats.add(loaded.images)
            for c, k in enumerate(counts_of(loaded.labels, n)):
                counts[c] += k
        return stats, counts

    def _load(self, class_ids: Sequence[int]) -> Loaded:
        loaded = self.source.load_train(class_ids, strict=self.strict)
        self.skipped.extend(s for s in loaded.skipped if s not in self.skipped)
        return loaded

    def class_fingerprints(self) -> list[str]:
        return self.source.class_fingerprints()

    def read_train(self, class_ids: Sequence[int]) -> ImageSet:
        ids = check_class_ids(class_ids, len(self.source.class_names))
        return self._load(ids).to_image_set()

    def read_test(self) -> ImageSet:
        loaded = self.source.load_test(strict=self.strict)
        self.skipped.extend(s for s in loaded.skipped if s not in self.skipped)
        return loaded.to_image_set()
